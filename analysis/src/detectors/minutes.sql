-- Per minute of the range: requests, mean log latency and error rate of one
-- subject, for finding the onset.
WITH {{shared}}
SELECT date_bin(INTERVAL '1 minute', start_time, TIMESTAMP '1970-01-01T00:00:00') AS minute,
       count(*) AS n,
       avg(ln(CAST(greatest(duration_ns, 1000) AS DOUBLE))) AS log_latency,
       avg(CAST(err AS DOUBLE)) AS error_rate
FROM requests
WHERE 1 = 1 {{filter}}
GROUP BY 1
ORDER BY 1
