-- Funnels per session: when it first and last requested each page of a flow, and
-- whether that page's request failed. A session reaches step k of a flow when
-- it reached k-1 and requested step k's page after first reaching k-1. A
-- session is current when its first request is; sessions still active within
-- the session timeout of the range's end are left out: they may not be done yet.
WITH {{shared}},
steps AS (
    SELECT session_id, max(last_seen) AS last_seen, min(start_time) AS first_seen{{segment_max}}{{step_aggregates}}
    FROM (
        SELECT r.*, {{step_case}} AS step
        FROM requests r
        WHERE r.session_id IS NOT NULL
    ) x
    GROUP BY session_id
),
funnel AS (
    SELECT *, CASE WHEN first_seen >= {{split}} THEN 1 ELSE 0 END AS cur{{reach}}
    FROM steps
    WHERE last_seen < {{complete_before}}
)
SELECT cur{{segments}}, count(*) AS sessions{{reach_sums}}
FROM funnel
WHERE 1 = 1 {{filter}}
GROUP BY cur{{segments}}
