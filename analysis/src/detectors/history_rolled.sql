-- How an operation moves from one window to the next, over the rollups: per
-- operation, segment and period of the current window's length (in whole
-- minutes) going back from the baseline's end (its minute), the requests,
-- the failed ones, and the requests that succeeded with the sum of their log
-- latencies (latency_history.sql over spans has the last two).
SELECT service, operation, period{{segments}}, sum(requests) AS requests, sum(errors) AS errors,
       sum(requests - errors) AS n, sum(log_sum) AS log_sum
FROM (
    SELECT service_name AS service, operation, requests, errors, log_latency_sum AS log_sum,
           date_bin(INTERVAL '{{window_secs}} seconds', minute, {{baseline_end}}) AS period
           {{metric_segments}}
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{baseline_end}}
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, period{{segments}}
