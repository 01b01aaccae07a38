-- Targets picked by id (deploy --target), comma-separated; empty: every
-- target the selector matches.
ALTER TABLE deployments ADD COLUMN targets TEXT NOT NULL DEFAULT '';
