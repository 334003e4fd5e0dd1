-- Page requests (a root server span, or a server span directly under a root
-- client span, as browser and app SDKs make them): each session's first request
-- of each page, for discovering the most common journey.
WITH {{shared}},
roots AS (
    SELECT trace_id, span_id
    FROM spans
    WHERE kind = 'client' AND (parent_span_id IS NULL OR parent_span_id = '')
      AND start_time >= {{from}} AND start_time < {{to}}
)
SELECT r.session_id, r.service, r.operation, min(r.start_time) AS first_time
FROM requests r LEFT JOIN roots ON r.trace_id = roots.trace_id AND r.parent_span_id = roots.span_id
WHERE r.session_id IS NOT NULL
  AND (r.parent_span_id IS NULL OR r.parent_span_id = '' OR roots.span_id IS NOT NULL)
GROUP BY r.session_id, r.service, r.operation
