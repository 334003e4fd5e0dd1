-- drop_off.sql over `sessions`, kept at ingest: the same funnels from one row
-- per session, operation and minute instead of every request. Only the rows of
-- the range's minutes are read, so a pass sees nothing that came after it.
-- A session's rows are first folded per page (`step`, null for the rest), so
-- the pivot to one column per page reads a few rows a session, not one per
-- operation and minute. `upto`, the range's latest call, is drop_off.sql's.
-- A session's `service.version` is drop_off.sql's: the release it was served
-- of the service released last over the rows read.
WITH raw_rows AS (
    SELECT r.session_id, r.service_name AS service, r.first_call AS start_time,
           CASE WHEN r.errors > 0 THEN 1 ELSE 0 END AS err, r.first_call, r.last_call{{session_segments}},
           {{step_case}} AS step
    FROM sessions r
    WHERE r.minute >= {{from}} AND r.minute < {{to}} AND (r.minute < {{baseline_end}} OR r.minute >= {{split}})
),
per_step AS (
    SELECT session_id, step, min(start_time) AS first_seen{{segment_max}},
           min(first_call) AS first_call, max(last_call) AS last_call, max(err) AS err
    FROM {{read}} x
    GROUP BY session_id, step
),
steps AS (
    SELECT session_id, min(first_seen) AS first_seen, max(last_call) AS last_active{{segment_max}}{{step_aggregates}}
    FROM per_step
    GROUP BY session_id
),
funnel AS (
    SELECT *, CASE WHEN first_seen >= {{split}} THEN 1 ELSE 0 END AS cur,
           least(CAST(max(last_active) OVER () AS BIGINT), {{end_ns}}) AS upto{{history}}{{reach}}
    FROM steps
),
weighed AS (
    {{weighed}}
)
SELECT cur{{history_keys}}{{segments}}, count(*) AS sessions{{reach_sums}}
FROM weighed
WHERE 1 = 1 {{filter}}
GROUP BY cur{{history_keys}}{{segments}}
