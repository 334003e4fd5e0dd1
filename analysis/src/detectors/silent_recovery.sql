-- Per session and operation: did a failure of the operation get followed within
-- {{retry_secs}} s by a success of the same operation, sent again by the person
-- (not the client's automatic resend), with the session going on afterwards?
WITH {{shared}},
resent AS (
    SELECT DISTINCT trace_id
    FROM spans
    WHERE http_request_resend_count > 0 AND start_time >= {{from}} AND start_time < {{to}}
),
calls AS (
    SELECT r.*, CASE WHEN rs.trace_id IS NULL THEN 0 ELSE 1 END AS auto,
           lag(r.err) OVER (PARTITION BY r.session_id, r.service, r.operation ORDER BY r.start_time) AS prev_err,
           lag(r.end_time) OVER (PARTITION BY r.session_id, r.service, r.operation ORDER BY r.start_time) AS prev_end
    FROM requests r LEFT JOIN resent rs ON r.trace_id = rs.trace_id
    WHERE r.session_id IS NOT NULL
),
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           max(err) AS had_error,
           max(CASE WHEN err = 0 AND prev_err = 1 AND auto = 0
                         AND start_time <= prev_end + INTERVAL '{{retry_secs}} seconds'
                         AND last_seen > end_time THEN 1 ELSE 0 END) AS recovered,
           max(CASE WHEN err = 0 AND prev_err = 1 AND auto = 1
                         AND start_time <= prev_end + INTERVAL '{{retry_secs}} seconds' THEN 1 ELSE 0 END) AS auto_recovered
    FROM calls
    WHERE 1 = 1 {{filter}}
    GROUP BY session_id, service, operation{{segments}}
)
SELECT service, operation, cur{{segments}},
       count(*) AS sessions,
       sum(had_error) AS error_sessions,
       sum(recovered) AS recovered_sessions,
       sum(auto_recovered) AS auto_recovered_sessions
FROM per_session
GROUP BY service, operation, cur{{segments}}
