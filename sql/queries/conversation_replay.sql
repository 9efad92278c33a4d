-- One session's decisions in turn order, with every category's score, threshold and the margins.
-- param session_id: required
SELECT turn, ts, user_id, stage, decision, categories, scores, thresholds, round(max_score, 4) AS max_score,
       round(min_margin, 4) AS min_margin, peak_category, round(peak_ratio, 4) AS peak_ratio, hugging_categories,
       blocked_categories, judge_verdict, round(judge_score, 4) AS judge_score
FROM decisions
WHERE session_id = $session_id
ORDER BY turn NULLS LAST, ts, event_id;
