-- Per tenant, category and day since a date: decisions, hug share and block share (the population baseline).
-- param since: 1970-01-01
SELECT tenant, category, day, sum(decisions) AS decisions, count(DISTINCT user_id) AS users,
       round(sum(hugs) / sum(decisions), 4) AS hug_share, round(sum(blocks) / sum(decisions), 4) AS block_share
FROM user_category_daily
WHERE day >= $since::DATE
GROUP BY tenant, category, day
ORDER BY tenant, category, day;
