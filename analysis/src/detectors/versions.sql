-- When each version of each service first served in the range, with its commit
-- and pull request from the vcs.* resource attributes.
SELECT service_name AS service, service_version AS version, min(start_time) AS first_seen,
       max(vcs_ref_head_revision) AS commit, max(vcs_change_id) AS pr, count(*) AS spans
FROM spans
WHERE start_time >= {{from}} AND start_time < {{to}} AND service_version IS NOT NULL AND kind = 'server'
GROUP BY service_name, service_version
