-- Every span of a sample of traces, read by trace id: the traces of the
-- picked requests of the operation under study, over the minutes where the
-- spans beneath those requests start (row groups and pages outside them, and
-- those whose bloom filter rules the ids out, are skipped).
SELECT s.trace_id, s.span_id, s.parent_span_id, s.service_name AS service, {{operation}} AS operation,
       s.kind, s.status_code
FROM spans s
WHERE s.trace_id IN ({{traces}}) AND s.start_time >= {{from}} AND s.start_time < {{to}}
