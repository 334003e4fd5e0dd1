-- latency_regression.sql over the rollups, for windows that start and end on
-- whole minutes: the histograms of the requests that succeeded, per operation,
-- side and segment, summed over the minutes of each side.
SELECT service, operation, cur{{segments}}, bucket, sum(n) AS n
FROM (
    SELECT service_name AS service, operation,
           CASE WHEN minute >= {{split}} THEN 1 ELSE 0 END AS cur{{metric_segments}},
           unnest(latency_buckets) AS bucket, unnest(latency_counts) AS n
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{to}}
      AND (minute < {{baseline_end}} OR minute >= {{split}})
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, cur{{segments}}, bucket
