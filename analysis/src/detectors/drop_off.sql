-- A funnel per session: when it first and last reached each step, and whether a
-- step's request failed. A session reaches step k when it reached k-1 and made a
-- step-k request after first reaching k-1. Sessions still active within the
-- session timeout of the range's end are left out: they may not be done yet.
WITH {{shared}},
steps AS (
    SELECT session_id, max(last_seen) AS last_seen{{segment_max}}{{step_aggregates}}
    FROM (
        SELECT r.*, {{step_case}} AS step
        FROM requests r
        WHERE r.session_id IS NOT NULL
    ) x
    WHERE step IS NOT NULL
    GROUP BY session_id
),
funnel AS (
    SELECT *, CASE WHEN first0 >= {{split}} THEN 1 ELSE 0 END AS cur{{reach}}
    FROM steps
    WHERE first0 IS NOT NULL AND last_seen < {{complete_before}}
)
SELECT cur{{segments}}, count(*) AS sessions{{reach_sums}}
FROM funnel
WHERE 1 = 1 {{filter}}
GROUP BY cur{{segments}}
