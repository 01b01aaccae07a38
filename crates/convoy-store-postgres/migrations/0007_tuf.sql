-- TUF metadata, every version of every role (clients fetch N.ROLE.json).
CREATE TABLE tuf_metadata (
    role TEXT NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (role, version)
);
