-- How steady each operation's latency is from one window to the next: per
-- operation, segment and period of the current window's length going back
-- from the baseline's end, the requests that succeeded and the sum of their
-- log latencies.
WITH {{shared}}
SELECT service, operation, period{{segments}}, count(*) AS n,
       sum(ln(CAST(greatest(duration_ns, 1000) AS DOUBLE))) AS log_sum
FROM (
    SELECT service, operation{{segments}}, duration_ns,
           date_bin(INTERVAL '{{window_secs}} seconds', start_time, {{baseline_end}}) AS period
    FROM requests
    WHERE err = 0 {{filter}}
) r
GROUP BY service, operation, period{{segments}}
