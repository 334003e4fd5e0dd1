-- journeys.sql over `sessions`, kept at ingest: each session's first request
-- of each page (a root server span, or one directly under a root client span)
-- in the baseline's minutes.
SELECT session_id, service_name AS service, operation, min(first_page) AS first_time
FROM sessions
WHERE first_page IS NOT NULL AND minute >= {{from}} AND minute < {{to}}
GROUP BY session_id, service_name, operation
