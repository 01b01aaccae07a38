-- A target's open instructions are found through (target_id, done)
-- instead of (target_id, state). `done` is derived from the state and
-- changes only when an instruction leaves or re-enters the states an
-- agent works on, so a target's finished history (an instruction per
-- deployment it was ever in) stays out of the lookup. A report's move
-- between working states (sent, received, staged, activating) then
-- changes no indexed column, and with room left on each page
-- (fillfactor) PostgreSQL writes it as a heap-only tuple: no index
-- entries at all, where it made three. Adding the stored column rewrites
-- the table once, under a lock that holds writes for that long; the
-- fillfactor applies to the pages written from then on.
ALTER TABLE instructions ADD COLUMN done BOOLEAN GENERATED ALWAYS AS
    (state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')) STORED;
CREATE INDEX instructions_target_done ON instructions (target_id, done);
DROP INDEX instructions_target_state;
ALTER TABLE instructions SET (fillfactor = 70);
