-- silent_recovery.sql over `sessions`, kept at ingest: per session and
-- operation, in the windows' minutes, whether a failure was followed within
-- the retry interval by a success the person sent again (not the client's
-- automatic resend), with the session going on afterwards.
WITH rows AS (
    SELECT session_id, service_name AS service, operation,
           CASE WHEN minute >= {{split}} THEN 1 ELSE 0 END AS cur{{session_segments}},
           errors, recovered, auto_recovered
    FROM sessions
    WHERE minute >= {{from}} AND minute < {{to}} AND (minute < {{baseline_end}} OR minute >= {{split}})
),
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           max(CASE WHEN errors > 0 THEN 1 ELSE 0 END) AS had_error,
           max(recovered) AS recovered,
           max(auto_recovered) AS auto_recovered
    FROM rows
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
