-- calls_sessions.sql for a continuous pass's window and for its last minute
-- in one read of `sessions`: the two statements share the baseline, and read
-- it once. The window's side is `cur` (from {{split}}), the last minute's is
-- `cur_s` (from {{short_split}}); the last minute's statement leaves out the
-- rows between the two (`in_short` is 0 on them), so its sums, its sessions
-- and what each session could have seen by the range's end (`seen_short`)
-- are taken over the other rows only. `present_s` says the group is in the
-- last minute's statement at all. The pass sums these groups back into the
-- two statements' rows (`crate::sides`).
WITH seen AS (
    SELECT session_id, max(coalesce(seen_end, session_end)) AS seen,
           max(CASE WHEN minute < {{baseline_end}} OR minute >= {{short_split}}
                    THEN coalesce(seen_end, session_end) END) AS seen_short
    FROM sessions
    WHERE minute >= {{from}} AND minute < {{to}} AND (minute < {{baseline_end}} OR minute >= {{split}})
    GROUP BY session_id
),
rows AS (
    SELECT r.session_id, r.service_name AS service, r.operation,
           CASE WHEN r.minute >= {{split}} THEN 1 ELSE 0 END AS cur,
           CASE WHEN r.minute >= {{short_split}} THEN 1 ELSE 0 END AS cur_s,
           CASE WHEN r.minute < {{baseline_end}} OR r.minute >= {{short_split}} THEN 1 ELSE 0 END AS in_short{{session_segments}},
           r.calls, r.errors, r.retries, r.auto_retries, r.auto_recovered,
           CASE WHEN r.recovered_end IS NULL THEN r.recovered
                WHEN r.recovered_end < seen.seen THEN 1 ELSE 0 END AS recovered,
           CASE WHEN r.recovered_end IS NULL THEN r.recovered
                WHEN r.recovered_end < seen.seen_short THEN 1 ELSE 0 END AS recovered_s
    FROM sessions r JOIN seen ON r.session_id = seen.session_id
    WHERE r.minute >= {{from}} AND r.minute < {{to}} AND (r.minute < {{baseline_end}} OR r.minute >= {{split}})
),
per_session AS (
    SELECT session_id, service, operation, min(cur) AS cur{{segments}},
           sum(calls) AS attempts, sum(retries) AS retries, sum(auto_retries) AS auto_retries,
           max(CASE WHEN errors > 0 THEN 1 ELSE 0 END) AS had_error,
           max(recovered) AS recovered,
           max(auto_recovered) AS auto_recovered,
           max(in_short) AS present_s,
           min(CASE WHEN in_short = 1 THEN cur_s END) AS cur_s,
           sum(CASE WHEN in_short = 1 THEN calls ELSE 0 END) AS attempts_s,
           sum(CASE WHEN in_short = 1 THEN retries ELSE 0 END) AS retries_s,
           sum(CASE WHEN in_short = 1 THEN auto_retries ELSE 0 END) AS auto_retries_s,
           max(CASE WHEN in_short = 1 AND errors > 0 THEN 1 ELSE 0 END) AS had_error_s,
           max(CASE WHEN in_short = 1 THEN recovered_s ELSE 0 END) AS recovered_s,
           max(CASE WHEN in_short = 1 THEN auto_recovered ELSE 0 END) AS auto_recovered_s
    FROM rows
    WHERE 1 = 1 {{filter}}
    GROUP BY session_id, service, operation{{segments}}
)
SELECT service, operation, cur, cur_s, present_s{{segments}},
       count(*) AS sessions,
       sum(CASE WHEN retries > 0 THEN 1 ELSE 0 END) AS retrying_sessions,
       sum(retries) AS retries,
       sum(auto_retries) AS auto_retries,
       sum(attempts) AS attempts,
       sum(had_error) AS error_sessions,
       sum(recovered) AS recovered_sessions,
       sum(auto_recovered) AS auto_recovered_sessions,
       sum(CASE WHEN retries_s > 0 THEN 1 ELSE 0 END) AS retrying_sessions_s,
       sum(retries_s) AS retries_s,
       sum(auto_retries_s) AS auto_retries_s,
       sum(attempts_s) AS attempts_s,
       sum(had_error_s) AS error_sessions_s,
       sum(recovered_s) AS recovered_sessions_s,
       sum(auto_recovered_s) AS auto_recovered_sessions_s
FROM per_session
GROUP BY service, operation, cur, cur_s, present_s{{segments}}
