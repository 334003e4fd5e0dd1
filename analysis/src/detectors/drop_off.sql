-- Funnels per session: when it first and last requested each page of a flow, and
-- whether that page's request failed. A session reaches step k of a flow when
-- it reached k-1 and requested step k's page after first reaching k-1. A
-- session is current when its first request is; sessions still active within
-- the session timeout of the range's end are left out: they may not be done yet.
--
-- That keeps a current session only if it ends a timeout before the window
-- does, so the longer a session, the less likely it is kept: left as it is,
-- the current window would hold shorter sessions than the baseline, which
-- reach fewer steps, and every short window would look like a drop-off. A
-- baseline session is weighted `w` by the share of the current window's start
-- times that would have kept a session of its length (`kept_ns`: the window
-- less the timeout), so both sides hold sessions of the same lengths; a
-- current session weighs 1. `reached_sq` (the weights' squares) gives the
-- effective number of sessions (Kish's n = (Σw)² / Σw²).
--
-- With a history (`history_query`), the range reaches further back than the
-- baseline, and each earlier session also gets the period of the window's
-- length it started in (`period` 0 ends at the baseline's end) and whether it
-- is in the baseline (`in_base`): the periods show how much the leaving rate
-- varies from one window to the next.
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
    SELECT *, CASE WHEN first_seen >= {{split}} THEN 1 ELSE 0 END AS cur,
           CASE WHEN first_seen >= {{split}} THEN 1.0
                ELSE CASE WHEN {{kept_ns}} > CAST(last_seen AS BIGINT) - CAST(first_seen AS BIGINT)
                          THEN CAST({{kept_ns}} - (CAST(last_seen AS BIGINT) - CAST(first_seen AS BIGINT)) AS DOUBLE) / {{kept_ns}}
                          ELSE 0.0 END
           END AS w{{history}}{{reach}}
    FROM steps
    WHERE last_seen < {{complete_before}}
)
SELECT cur{{history_keys}}{{segments}}, count(*) AS sessions{{reach_sums}}
FROM funnel
WHERE 1 = 1 {{filter}}
GROUP BY cur{{history_keys}}{{segments}}
