ALTER TABLE deployments ADD COLUMN stage_deadline INTEGER;
ALTER TABLE deployments ADD COLUMN activate_timeout_ms INTEGER NOT NULL DEFAULT 900000;
