-- Requests made by `convoy plan apply` name their plan and entry, so that
-- applying the plan again finds them (empty: not from a plan).
ALTER TABLE deployments ADD COLUMN plan_name TEXT NOT NULL DEFAULT '';
ALTER TABLE deployments ADD COLUMN plan_entry TEXT NOT NULL DEFAULT '';
-- the entry's fingerprint when it was applied: a changed entry makes a new request
ALTER TABLE deployments ADD COLUMN plan_digest TEXT NOT NULL DEFAULT '';
CREATE INDEX deployments_plan ON deployments (plan_name) WHERE plan_name <> '';
-- What the publisher said about a release's build (commit, branch, CI run),
-- as JSON; empty when it said nothing.
ALTER TABLE releases ADD COLUMN provenance TEXT NOT NULL DEFAULT '';
