-- A paused deployment starts no new wave until it is resumed.
CREATE TABLE pauses (
    deployment_id TEXT PRIMARY KEY,
    paused_by TEXT NOT NULL,
    at BIGINT NOT NULL
);
