-- `done` becomes a column of its own, kept by triggers, instead of a
-- virtual column computed from the state. SQLite rewrites an index entry
-- whenever a column the index depends on is assigned: with a virtual
-- `done`, every report's move of `state` rewrote its instruction's entry in
-- instructions_target_done (one more page written per report, about a
-- quarter of SQLite's time per move). A stored `done` is not assigned by
-- the report writer's UPDATE; the triggers below change it only when an
-- instruction leaves or re-enters the states an agent works on, for every
-- writer alike: an insert's `done` is set from its state, and an update
-- that sets another value is refused. (RETURNING shows `done` as it was
-- before these AFTER triggers ran.) The back-fill rewrites each finished
-- instruction once.
DROP INDEX instructions_target_done;
ALTER TABLE instructions DROP COLUMN done;
ALTER TABLE instructions ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
UPDATE instructions SET done = 1
    WHERE state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back');
CREATE INDEX instructions_target_done ON instructions (target_id, done);
CREATE TRIGGER instructions_done_on_update AFTER UPDATE OF state ON instructions
    WHEN NEW.done IS NOT (NEW.state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back'))
BEGIN
    UPDATE instructions
        SET done = (NEW.state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back'))
        WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER instructions_done_on_insert AFTER INSERT ON instructions
    WHEN NEW.done IS NOT (NEW.state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back'))
BEGIN
    UPDATE instructions
        SET done = (NEW.state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back'))
        WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER instructions_done_kept AFTER UPDATE OF done ON instructions
    WHEN NEW.done IS NOT (NEW.state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back'))
BEGIN
    SELECT RAISE(ABORT, 'instructions.done is kept by triggers and follows the state');
END;
