-- Approvers' public keys (signed approvals), and each approval's signed
-- statement with its signature (JSON; empty for an unsigned approval).
CREATE TABLE user_keys (
    keyid TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at BIGINT NOT NULL
);
CREATE INDEX user_keys_user ON user_keys (user_name);
ALTER TABLE approvals ADD COLUMN signed TEXT NOT NULL DEFAULT '';
