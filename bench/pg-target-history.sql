-- A target's open instructions among its finished history: 2,000 targets
-- with 200 finished instructions each and one open, looked up through an
-- index on target_id alone, one on (target_id, state), and one on
-- (target_id, done) as migration 13 makes it.
-- Usage: psql postgres://postgres@127.0.0.1:5432/test -f bench/pg-target-history.sql
-- (makes and drops the schema "hist").
DROP SCHEMA IF EXISTS hist CASCADE; CREATE SCHEMA hist; SET search_path = hist;
CREATE TABLE instructions (id TEXT PRIMARY KEY, deployment_id TEXT NOT NULL, target_id TEXT NOT NULL, state TEXT NOT NULL, attempt BIGINT NOT NULL, metrics TEXT NOT NULL, output TEXT NOT NULL, note TEXT NOT NULL, updated_at BIGINT NOT NULL);
-- 2,000 targets x 200 past deployments (all succeeded) + 1 pending each
INSERT INTO instructions SELECT md5(d::text||'-'||t::text), 'dep-'||d, 'target-'||t, CASE WHEN d = 200 THEN 'sent' ELSE 'succeeded' END, 1, '{}', '', 'a note of some length here', d FROM generate_series(1,200) d, generate_series(1,2000) t;
CREATE INDEX it ON instructions (target_id);
ANALYZE instructions;

EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM instructions WHERE target_id = 'target-77' AND state IN ('created','sent','received','staged','activating','rolling_back') ORDER BY updated_at, id;
DROP INDEX it; CREATE INDEX its ON instructions (target_id, state); ANALYZE instructions;
EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM instructions WHERE target_id = 'target-77' AND state IN ('created','sent','received','staged','activating','rolling_back') ORDER BY updated_at, id;
DROP INDEX its;
ALTER TABLE instructions ADD COLUMN done BOOLEAN GENERATED ALWAYS AS (state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')) STORED;
CREATE INDEX itd ON instructions (target_id, done); ANALYZE instructions;
EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM instructions WHERE target_id = 'target-77' AND done = FALSE AND state IN ('created','sent','received','staged','activating','rolling_back') ORDER BY updated_at, id;
DROP SCHEMA hist CASCADE;
