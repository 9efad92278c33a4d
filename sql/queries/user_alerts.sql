-- One user's alerts with status, severity, reason, suggested action and their lifecycle history (alert_changes).
-- param user_id: required
SELECT a.alert_id, a.ts, a.tenant, a.detector, a.category, a.status, a.severity, round(a.score, 4) AS score,
       a.reason, a.action, a.first_ts, a.last_ts, a.updates, a.episode,
       (SELECT list({'ts': c.ts, 'change': c.change, 'status': c.status, 'severity': c.severity,
                     'score': round(c.score, 4)} ORDER BY c.ts, c.change_id)
        FROM alert_changes c WHERE c.alert_id = a.alert_id) AS history
FROM alerts a
WHERE a.user_id = $user_id
ORDER BY a.ts, a.alert_id;
