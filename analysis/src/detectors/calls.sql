-- Shared by retry and silent_recovery: each session's calls of an operation in
-- order, with the previous call's outcome and end, and whether the client sent
-- this one again by itself (http.request.resend_count on the trace).
resent AS (
    SELECT DISTINCT trace_id
    FROM spans
    WHERE http_request_resend_count > 0 AND start_time >= {{from}} AND start_time < {{to}}
),
calls AS (
    SELECT r.*, CASE WHEN rs.trace_id IS NULL THEN 0 ELSE 1 END AS auto,
           lag(r.err) OVER (PARTITION BY r.session_id, r.service, r.operation ORDER BY r.start_time) AS prev_err,
           lag(r.end_time) OVER (PARTITION BY r.session_id, r.service, r.operation ORDER BY r.start_time) AS prev_end
    FROM requests r LEFT JOIN resent rs ON r.trace_id = rs.trace_id
    WHERE r.session_id IS NOT NULL
)
