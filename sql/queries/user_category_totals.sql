-- One user's per-category totals over every day in user_category_daily: decisions, blocks, hugs and shares.
-- param user_id: required
SELECT tenant, category, min(day) AS first_day, max(day) AS last_day, sum(decisions) AS decisions,
       sum(blocks) AS blocks, sum(hugs) AS hugs, round(sum(hugs) / sum(decisions), 4) AS hug_share,
       round(sum(score_sum) / sum(decisions), 4) AS mean_score
FROM user_category_daily
WHERE user_id = $user_id
GROUP BY tenant, category
ORDER BY hugs DESC, category;
