-- The operations served in the range, for matching configured flow steps to the
-- services that serve them.
WITH {{shared}}
SELECT DISTINCT service, operation FROM requests
