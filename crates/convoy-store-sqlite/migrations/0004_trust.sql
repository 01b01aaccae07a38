-- Revoked tokens are kept (hashed) so their holders learn why they fail.
ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
ALTER TABLE tokens ADD COLUMN revoked_note TEXT NOT NULL DEFAULT '';
-- What the server last ignored from a target (labels it asked for, work it refused).
ALTER TABLE targets ADD COLUMN warning TEXT NOT NULL DEFAULT '';
-- Enrolment tokens as objects: label scope (NULL: none), expiry, uses.
CREATE TABLE enrol_tokens (
    id TEXT PRIMARY KEY,
    labels TEXT,
    expires_at INTEGER,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
INSERT INTO enrol_tokens (id, labels, expires_at, max_uses, uses, created_by, created_at, revoked_at)
    SELECT 'e-' || substr(hash, 1, 12), NULL, NULL, NULL, 0, 'bootstrap', created_at, NULL FROM tokens WHERE kind = 'enrol';
UPDATE tokens SET subject = 'e-' || substr(hash, 1, 12) WHERE kind = 'enrol';
-- Relays exist only by an operator's grant.
CREATE TABLE relays (
    target_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    url TEXT,
    granted_by TEXT NOT NULL,
    granted_at INTEGER NOT NULL
);
-- The server's online keys (work items and read grants are signed with them).
CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    public TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
