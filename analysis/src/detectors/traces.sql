-- Every span of a sample of traces, each tagged with the picked span of the
-- operation under study ({{picks}} yields trace_id and span_id).
WITH {{ctes}}picked AS (
    {{picks}}
)
SELECT p.span_id AS picked, s.trace_id, s.span_id, s.parent_span_id, s.service_name AS service,
       {{operation}} AS operation, s.kind, s.status_code, s.start_time, s.end_time
FROM spans s JOIN picked p ON s.trace_id = p.trace_id
WHERE s.start_time >= {{from}} AND s.start_time < {{to}}
