-- Latency of the requests that succeeded, per side (exact percentiles: the
-- same data gives the same numbers, pass after pass and on replay).
WITH {{shared}}
SELECT CASE WHEN cur = 1 THEN 'current' ELSE 'baseline' END AS side,
       count(*) AS requests,
       count(DISTINCT session_id) AS sessions,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) / 1e6, 3) AS p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) / 1e6, 3) AS p95_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) / 1e6, 3) AS p99_ms
FROM requests
WHERE err = 0 {{filter}}
GROUP BY 1
ORDER BY 1
