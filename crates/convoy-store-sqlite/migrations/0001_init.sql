CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE targets (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    labels TEXT NOT NULL,
    inventory TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE releases (
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest BLOB NOT NULL,
    files INTEGER NOT NULL,
    total_size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, version)
);
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    selector TEXT NOT NULL,
    state TEXT NOT NULL,
    go_live_at INTEGER,
    max_failures INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    note TEXT NOT NULL,
    FOREIGN KEY (app, version) REFERENCES releases (app, version)
);
CREATE INDEX deployments_state ON deployments (state);
CREATE TABLE instructions (
    id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    target_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    previous_version TEXT,
    go_live_at INTEGER,
    reported_digest TEXT,
    metrics TEXT NOT NULL,
    output TEXT NOT NULL,
    note TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX instructions_deployment ON instructions (deployment_id);
CREATE INDEX instructions_target_state ON instructions (target_id, state);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    instruction_id TEXT,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX events_deployment ON events (deployment_id, seq);
