-- Per minute of the range: requests, mean log latency (of those that
-- succeeded) and error rate of one subject, read from the rollups. The minutes
-- at either end of the range count whole.
SELECT minute AS bin,
       sum(requests) AS n,
       sum(log_latency_sum) / CAST(nullif(sum(requests - errors), 0) AS DOUBLE) AS log_latency,
       CAST(sum(errors) AS DOUBLE) / sum(requests) AS error_rate
FROM span_metrics
WHERE kind = 'server'
  AND minute >= date_bin(INTERVAL '60 seconds', {{from}}, TIMESTAMP '1970-01-01T00:00:00')
  AND minute < {{to}} {{filter}}
GROUP BY 1
ORDER BY 1
