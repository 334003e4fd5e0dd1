-- latency_regression.sql over the rollups, for windows that start and end on
-- whole minutes: the histograms of the requests that succeeded, per operation,
-- side and segment, summed over the minutes of each side. `side` is 1 from
-- the current window's start, else 0 (a pass that shares this statement with
-- its last minute's tells the last minute apart as 2).
SELECT service, operation, cur{{segments}}, bucket, sum(n) AS n
FROM (
    SELECT service_name AS service, operation,
           {{side}} AS cur{{metric_segments}},
           unnest(latency_buckets) AS bucket, unnest(latency_counts) AS n
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{to}}
      AND (minute < {{baseline_end}} OR minute >= {{split}})
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, cur{{segments}}, bucket
