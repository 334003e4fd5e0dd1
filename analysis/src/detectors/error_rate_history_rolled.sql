-- error_rate_regression.sql's history over the rollups: per operation,
-- segment and period of the current window's length (in whole minutes) going
-- back from the baseline's end (its minute), the requests and the failed ones.
SELECT service, operation, period{{segments}}, sum(requests) AS n, sum(errors) AS errors
FROM (
    SELECT service_name AS service, operation, requests, errors,
           date_bin(INTERVAL '{{window_secs}} seconds', minute, {{baseline_end}}) AS period
           {{metric_segments}}
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{baseline_end}}
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, period{{segments}}
