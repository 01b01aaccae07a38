ALTER TABLE deployments ADD COLUMN stage_deadline BIGINT;
ALTER TABLE deployments ADD COLUMN activate_timeout_ms BIGINT NOT NULL DEFAULT 900000;
