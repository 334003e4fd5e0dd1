-- Funnels per session: when it first and last requested each page of a flow, and
-- whether that page's request failed. A session reaches step k of a flow when
-- it reached k-1 and requested step k's page after first reaching k-1 (at
-- `t{f}_{k}`, the latest of the first requests of the pages so far). A session
-- is current when its first request is.
--
-- Each step has a horizon H (`horizons` of the flow, from the baseline's own
-- step-to-step times): a session went on when it requested the next page
-- within H of reaching the step, and it counts at the step only when it
-- reached it more than H before the range's end, so it had the time to go on.
-- No session has to have ended: a step is judged H after sessions reach it,
-- not a session timeout after they leave.
--
-- The range's end is what the range has seen (`upto`): its latest request, or
-- its end if earlier. Where traffic stops before the end (spans still on their
-- way, a collector down, a replay of data that ends), a session that reached
-- a step less than H before the last request had no time to go on that the
-- range could see, so it is not judged there.
--
-- That keeps a current session at step k only if it reached the step H before
-- the window ends, so the longer a session takes to get there, the less likely
-- it is kept: left as it is, the current window would hold the quicker
-- sessions, which differ from the rest. A baseline session is weighted
-- `e{f}_{k}` by the share of the current window's start times that would have
-- kept it (the window less H, `kept`); a current session weighs 1. The sums of
-- the weights' squares give the effective number of sessions (Kish's
-- n = (Σw)² / Σw²).
--
-- A session's segment values are the greatest of its requests', except
-- `service.version`, which only a short window reads (none over a whole
-- window): the release that served it of the service released last (the one
-- whose release's first request over the range, `released`, came latest),
-- none if that service did not serve it (`read`). During a rollout, the
-- sessions the new release served and those the release before it served
-- are told apart, whichever service of the steps it is, and the rest are not
-- mistaken for either.
--
-- With a history (`history_query`), the range reaches further back than the
-- baseline, and each earlier session also gets the period of the window's
-- length it started in (`period` 0 ends at the baseline's end) and whether it
-- is in the baseline (`in_base`): the periods show how much the leaving rate
-- varies from one window to the next.
WITH {{shared}},
raw_rows AS (
    SELECT r.*, {{step_case}} AS step
    FROM requests r
    WHERE r.session_id IS NOT NULL
),
steps AS (
    SELECT session_id, min(start_time) AS first_seen, max(start_time) AS last_active{{segment_max}}{{step_aggregates}}
    FROM {{read}} x
    GROUP BY session_id
),
funnel AS (
    SELECT *, CASE WHEN first_seen >= {{split}} THEN 1 ELSE 0 END AS cur,
           least(CAST(max(last_active) OVER () AS BIGINT), {{end_ns}}) AS upto{{history}}{{reach}}
    FROM steps
),
weighed AS (
    {{weighed}}
)
SELECT cur{{history_keys}}{{segments}}, count(*) AS sessions{{reach_sums}}
FROM weighed
WHERE 1 = 1 {{filter}}
GROUP BY cur{{history_keys}}{{segments}}
