-- One user's decisions in event-time order (the latest `limit`): stage, decision, hugging/blocked categories, margin, peak.
-- (From decision_rows, the table under the `decisions` view: nothing here needs the score maps.)
-- param user_id: required
-- param limit: 500
SELECT ts, tenant, session_id, turn, stage, guardrail, decision, hugging_categories, blocked_categories,
       round(min_margin, 4) AS min_margin, peak_category, round(peak_ratio, 4) AS peak_ratio
FROM (
    SELECT * FROM decision_rows WHERE user_id = $user_id ORDER BY ts DESC, event_id DESC LIMIT $limit::BIGINT
)
ORDER BY ts, event_id;
