-- Requests and errors per operation, side and segment. An error is the
-- operation's own when none of its children failed; otherwise it was passed up.
WITH {{shared}},
error_parents AS (
    SELECT DISTINCT trace_id, parent_span_id
    FROM spans
    WHERE status_code = 'error' AND start_time >= {{from}} AND start_time < {{to}}
)
SELECT service, operation, cur{{segments}},
       count(*) AS n,
       sum(err) AS errors,
       sum(CASE WHEN err = 1 AND ep.trace_id IS NULL THEN 1 ELSE 0 END) AS own_errors,
       count(DISTINCT CASE WHEN err = 1 THEN session_id END) AS error_sessions
FROM requests r
LEFT JOIN error_parents ep ON r.trace_id = ep.trace_id AND r.span_id = ep.parent_span_id
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, cur{{segments}}
