-- error_rate_regression.sql over the rollups, for windows that start and end
-- on whole minutes. Sessions that hit an error are not in the rollups; the
-- evidence of a finding counts them. `side` is as in latency_rolled.sql.
SELECT service, operation, cur{{segments}},
       sum(requests) AS n, sum(errors) AS errors, sum(own_errors) AS own_errors,
       CAST(NULL AS BIGINT) AS error_sessions
FROM (
    SELECT service_name AS service, operation,
           {{side}} AS cur{{metric_segments}},
           requests, errors, own_errors
    FROM span_metrics
    WHERE kind = 'server' AND minute >= {{from}} AND minute < {{to}}
      AND (minute < {{baseline_end}} OR minute >= {{split}})
) m
WHERE 1 = 1 {{filter}}
GROUP BY service, operation, cur{{segments}}
