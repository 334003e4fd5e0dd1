-- Per session and operation: calls, and calls that follow a failure of the same
-- operation within {{retry_secs}} s (retries), automatic when the client marked
-- the request with http.request.resend_count.
WITH {{shared}},
{{calls}},
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           count(*) AS attempts,
           sum(CASE WHEN prev_err = 1 AND start_time <= prev_end + INTERVAL '{{retry_secs}} seconds' THEN 1 ELSE 0 END) AS retries,
           sum(CASE WHEN prev_err = 1 AND start_time <= prev_end + INTERVAL '{{retry_secs}} seconds' AND auto = 1 THEN 1 ELSE 0 END) AS auto_retries,
           max(err) AS had_error,
           max(CASE WHEN err = 0 AND prev_err = 1 AND start_time <= prev_end + INTERVAL '{{retry_secs}} seconds' THEN 1 ELSE 0 END) AS succeeded_after_retry
    FROM calls
    WHERE 1 = 1 {{filter}}
    GROUP BY session_id, service, operation{{segments}}
)
SELECT service, operation, cur{{segments}},
       count(*) AS sessions,
       sum(CASE WHEN retries > 0 THEN 1 ELSE 0 END) AS retrying_sessions,
       sum(retries) AS retries,
       sum(auto_retries) AS auto_retries,
       sum(attempts) AS attempts,
       sum(had_error) AS error_sessions,
       sum(succeeded_after_retry) AS recovered_sessions
FROM per_session
GROUP BY service, operation, cur{{segments}}
