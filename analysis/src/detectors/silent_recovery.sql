-- Per session and operation: did a failure of the operation get followed within
-- {{retry_secs}} s by a success of the same operation, sent again by the person
-- (not the client's automatic resend), with the session going on afterwards?
WITH {{shared}},
{{calls}},
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
