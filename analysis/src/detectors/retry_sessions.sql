-- retry.sql over `sessions`, kept at ingest: per session and operation, the
-- calls in the windows' minutes, the calls that followed a failure of the same
-- operation within the retry interval (retries), automatic when the client
-- resent them, and whether a retry succeeded.
WITH rows AS (
    SELECT session_id, service_name AS service, operation,
           CASE WHEN minute >= {{split}} THEN 1 ELSE 0 END AS cur{{session_segments}},
           calls, errors, retries, auto_retries, retried_ok
    FROM sessions
    WHERE minute >= {{from}} AND minute < {{to}} AND (minute < {{baseline_end}} OR minute >= {{split}})
),
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           sum(calls) AS attempts, sum(retries) AS retries, sum(auto_retries) AS auto_retries,
           max(CASE WHEN errors > 0 THEN 1 ELSE 0 END) AS had_error,
           max(retried_ok) AS succeeded_after_retry
    FROM rows
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
