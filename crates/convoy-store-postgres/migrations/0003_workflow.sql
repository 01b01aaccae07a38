CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE environments (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
ALTER TABLE deployments ADD COLUMN env TEXT;
ALTER TABLE deployments ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE deployments ADD COLUMN policy TEXT NOT NULL DEFAULT '';
ALTER TABLE deployments ADD COLUMN plan TEXT NOT NULL DEFAULT '';
ALTER TABLE deployments ADD COLUMN wave BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN expires_at BIGINT;
ALTER TABLE instructions ADD COLUMN wave BIGINT NOT NULL DEFAULT 1;
ALTER TABLE instructions ADD COLUMN planned_at BIGINT;
CREATE TABLE approvals (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    revision BIGINT NOT NULL,
    approver TEXT NOT NULL,
    decision TEXT NOT NULL,
    note TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, revision, approver)
);
CREATE TABLE checks (
    id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    target_id TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT NOT NULL,
    output TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX checks_deployment ON checks (deployment_id);
CREATE INDEX checks_target_state ON checks (target_id, state);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX events_actor ON events (actor, seq);
