-- latency_history.sql over the rollups: per operation, segment and period of
-- the current window's length (in whole minutes) going back from the
-- baseline's end (its minute), the requests that succeeded and the sum of
-- their log latencies.
SELECT service, operation, period{{segments}}, sum(n) AS n, sum(log_sum) AS log_sum
FROM (
    SELECT service_name AS service, operation, requests - errors AS n, log_latency_sum AS log_sum,
           date_bin(INTERVAL '{{window_secs}} seconds', minute, {{baseline_end}}) AS period
           {{metric_segments}}
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{baseline_end}}
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, period{{segments}}
