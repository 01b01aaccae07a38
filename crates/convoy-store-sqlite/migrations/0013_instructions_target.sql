-- A target's open instructions are found through (target_id, done)
-- instead of (target_id, state): `done` is derived from the state
-- (computed when read, and kept in the index) and changes only when an
-- instruction leaves or re-enters the states an agent works on, so a
-- target's finished history (an instruction per deployment it was ever
-- in) stays out of the lookup without the index holding the state.
ALTER TABLE instructions ADD COLUMN done INTEGER GENERATED ALWAYS AS
    (state NOT IN ('created', 'sent', 'received', 'staged', 'activating', 'rolling_back')) VIRTUAL;
CREATE INDEX instructions_target_done ON instructions (target_id, done);
DROP INDEX instructions_target_state;
