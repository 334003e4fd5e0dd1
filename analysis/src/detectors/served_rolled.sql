-- served.sql over `span_metrics`: the operations served in the windows.
SELECT DISTINCT service_name AS service, operation
FROM span_metrics
WHERE kind = 'server' AND minute >= {{from}} AND minute < {{to}}
  AND (minute < {{baseline_end}} OR minute >= {{split}})
