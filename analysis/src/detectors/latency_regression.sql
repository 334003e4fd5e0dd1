-- Latency histograms per operation, side and segment: log-spaced buckets of
-- {{buckets_per_e}} per factor e, which Mann-Whitney U and Hodges-Lehmann read.
WITH {{shared}}
SELECT service, operation, cur{{segments}}, bucket, count(*) AS n
FROM (
    SELECT service, operation, cur{{segments}},
           CAST(floor(ln(CAST(greatest(duration_ns, 1000) AS DOUBLE)) * {{buckets_per_e}}) AS BIGINT) AS bucket
    FROM requests
    WHERE 1 = 1 {{filter}}
) b
GROUP BY service, operation, cur{{segments}}, bucket
