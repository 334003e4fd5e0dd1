-- How often sessions retry an operation from one window to the next, over
-- `sessions`: per operation, segment and period of the current window's
-- length (in whole minutes) going back from the baseline's end (its minute),
-- the sessions that called the operation and those that retried it. A
-- session that called it in two periods counts in both, as it would in two
-- windows.
SELECT service, operation, period{{segments}}, count(*) AS sessions,
       sum(CASE WHEN retries > 0 THEN 1 ELSE 0 END) AS retrying_sessions
FROM (
    SELECT session_id, service, operation, period{{segments}}, sum(retries) AS retries
    FROM (
        SELECT session_id, service_name AS service, operation, retries,
               date_bin(INTERVAL '{{window_secs}} seconds', minute, {{baseline_end}}) AS period
               {{session_segments}}
        FROM sessions
        WHERE minute >= {{from}} AND minute < {{baseline_end}}
    ) r
    WHERE 1 = 1 {{filter}}
    GROUP BY session_id, service, operation, period{{segments}}
) s
GROUP BY service, operation, period{{segments}}
