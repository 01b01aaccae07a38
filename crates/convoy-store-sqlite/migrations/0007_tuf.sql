-- TUF metadata, every version of every role (clients fetch N.ROLE.json).
CREATE TABLE tuf_metadata (
    role TEXT NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (role, version)
);
