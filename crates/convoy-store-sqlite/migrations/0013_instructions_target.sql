-- A target's instructions are found by target alone (a target has few):
-- with the state out of the index, a report's move of an instruction's
-- state no longer rewrites an index entry, one random page less to write
-- per report.
CREATE INDEX instructions_target ON instructions (target_id);
DROP INDEX instructions_target_state;
