-- Per minute of the range, by operation and segment values: requests,
-- successful requests with the sum of their log latency, and errors, of the
-- operations whose onset series a pass needs (each series sums the cells of
-- its segment). The minutes at either end of the range count whole.
SELECT bin, service, operation{{segments}},
       sum(requests) AS n,
       sum(requests - errors) AS ok,
       sum(errors) AS errors,
       sum(log_latency_sum) AS log_latency_sum
FROM (
    SELECT minute AS bin, service_name AS service, operation{{metric_segments}},
           requests, errors, log_latency_sum
    FROM span_metrics
    WHERE kind = 'server'
      AND minute >= date_bin(INTERVAL '60 seconds', {{from}}, TIMESTAMP '1970-01-01T00:00:00')
      AND minute < {{to}} AND ({{sites}})
) cells
GROUP BY bin, service, operation{{segments}}
