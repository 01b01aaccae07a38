-- Nearly every write to an instruction is a report that changes its
-- state. With the state in an index, each such write also rewrote an
-- index entry (on PostgreSQL it could never be a heap-only update, so
-- every index of the table got a new entry). A target's instructions are
-- now found by target alone, and its pending ones filtered from those.
DROP INDEX instructions_target_state;
CREATE INDEX instructions_target ON instructions (target_id);
