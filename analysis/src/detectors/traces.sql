-- Every span of a sample of traces, read by trace id: the traces of the
-- picked requests of the operation under study, over only the minutes where
-- the spans beneath those requests start (each request's reach).
SELECT s.trace_id, s.start_time, s.span_id, s.parent_span_id, s.service_name AS service,
       {{operation}} AS operation, s.kind, s.status_code
FROM spans s
WHERE s.trace_id IN ({{traces}}) AND s.start_time >= {{from}} AND s.start_time < {{to}}
