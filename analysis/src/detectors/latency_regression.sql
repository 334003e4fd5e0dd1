-- Latency histograms per operation, side and segment: log-spaced buckets of
-- {{buckets_per_e}} per factor e, which Mann-Whitney U and Hodges-Lehmann read.
-- Requests that succeeded only: a failure's time is not the service's latency
-- (a fast failure ending would otherwise look like a slowdown), and failures
-- are the error-rate detector's.
WITH {{shared}}
SELECT service, operation, cur{{segments}}, bucket, count(*) AS n
FROM (
    SELECT service, operation, cur{{segments}},
           CAST(floor(ln(CAST(greatest(duration_ns, 1000) AS DOUBLE)) * {{buckets_per_e}}) AS BIGINT) AS bucket
    FROM requests
    WHERE err = 0 {{filter}}
) b
GROUP BY service, operation, cur{{segments}}, bucket
