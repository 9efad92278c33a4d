-- The users who hug a category's threshold most since a day (category null = every category), from user_category_daily.
-- param category: null
-- param since: 1970-01-01
-- param limit: 20
SELECT category, tenant, user_id, min(day) AS first_day, max(day) AS last_day, sum(hugs) AS hugs,
       sum(decisions) AS decisions, round(sum(hugs) / sum(decisions), 4) AS share
FROM user_category_daily
WHERE ($category IS NULL OR category = $category) AND day >= $since::DATE
GROUP BY category, tenant, user_id
HAVING sum(hugs) > 0
ORDER BY hugs DESC, share DESC, user_id
LIMIT $limit::BIGINT;
