-- Per bin of the range ({{bin_secs}} s: a minute, finer on short ranges):
-- requests, mean log latency (of those that succeeded) and error rate of one
-- subject, for finding the onset.
WITH {{shared}}
SELECT date_bin(INTERVAL '{{bin_secs}} seconds', start_time, TIMESTAMP '1970-01-01T00:00:00') AS bin,
       count(*) AS n,
       avg(CASE WHEN err = 0 THEN ln(CAST(greatest(duration_ns, 1000) AS DOUBLE)) END) AS log_latency,
       avg(CAST(err AS DOUBLE)) AS error_rate
FROM requests
WHERE 1 = 1 {{filter}}
GROUP BY 1
ORDER BY 1
