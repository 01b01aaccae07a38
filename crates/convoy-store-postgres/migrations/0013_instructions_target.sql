-- A target's instructions are found by target alone (a target has few).
-- With the state out of every index, a report's move updates no indexed
-- column, and with room left on each page (fillfactor) PostgreSQL writes
-- it as a heap-only tuple: no index entries at all, where it made three.
-- The fillfactor applies to pages written from now on.
CREATE INDEX instructions_target ON instructions (target_id);
DROP INDEX instructions_target_state;
ALTER TABLE instructions SET (fillfactor = 70);
