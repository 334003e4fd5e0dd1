-- Shared by every detector: each session's segment values (a browser's resource
-- carries os.type, a backend's cloud.region), and the server spans of the range
-- with their operation, side (baseline 0, current 1) and segment values. A query
-- that needs no session values (no segment, no session end) skips the join.
sessions AS (
    SELECT session_id, max(end_time) AS last_seen{{session_aggregates}}
    FROM spans
    WHERE start_time >= {{from}} AND start_time < {{to}} AND session_id IS NOT NULL
    GROUP BY session_id
),
requests AS (
    SELECT s.trace_id, s.span_id, s.parent_span_id, s.session_id, s.service_name AS service,
           {{operation}} AS operation, s.http_route AS route, s.name AS span_name,
           s.start_time, s.end_time, s.duration_ns,
           CASE WHEN s.status_code = 'error' THEN 1 ELSE 0 END AS err,
           CASE WHEN s.start_time >= {{split}} THEN 1 ELSE 0 END AS cur,
           {{last_seen}}{{request_segments}}
    FROM spans s{{session_join}}
    WHERE s.kind = 'server' AND s.start_time >= {{from}} AND s.start_time < {{to}}
      AND (s.start_time < {{baseline_end}} OR s.start_time >= {{split}})
)
