-- retry.sql and silent_recovery.sql over `sessions`, kept at ingest: one
-- statement both detectors read (a pass runs it once). Per session and
-- operation, in the windows' minutes: the calls, the calls that followed a
-- failure of the same operation within the retry interval (retries),
-- automatic when the client resent them; and whether a failure was followed
-- within the retry interval by a success the person sent again (not the
-- client's automatic resend), with the session going on afterwards: a span of
-- it ended after the recovery among those a pass ending at the range's end
-- could have seen (the latest `seen_end` of its rows in the range), never
-- what came after. Files written before `recovered_end` existed say
-- `recovered` instead.
WITH seen AS (
    SELECT session_id, max(coalesce(seen_end, session_end)) AS seen
    FROM sessions
    WHERE minute >= {{from}} AND minute < {{to}} AND (minute < {{baseline_end}} OR minute >= {{split}})
    GROUP BY session_id
),
rows AS (
    SELECT r.session_id, r.service_name AS service, r.operation,
           CASE WHEN r.minute >= {{split}} THEN 1 ELSE 0 END AS cur{{session_segments}},
           r.calls, r.errors, r.retries, r.auto_retries, r.auto_recovered,
           CASE WHEN r.recovered_end IS NULL THEN r.recovered
                WHEN r.recovered_end < seen.seen THEN 1 ELSE 0 END AS recovered
    FROM sessions r JOIN seen ON r.session_id = seen.session_id
    WHERE r.minute >= {{from}} AND r.minute < {{to}} AND (r.minute < {{baseline_end}} OR r.minute >= {{split}})
),
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           sum(calls) AS attempts, sum(retries) AS retries, sum(auto_retries) AS auto_retries,
           max(CASE WHEN errors > 0 THEN 1 ELSE 0 END) AS had_error,
           max(recovered) AS recovered,
           max(auto_recovered) AS auto_recovered
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
       sum(recovered) AS recovered_sessions,
       sum(auto_recovered) AS auto_recovered_sessions
FROM per_session
GROUP BY service, operation, cur{{segments}}
