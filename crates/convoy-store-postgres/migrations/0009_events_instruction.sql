-- A page of a deployment's targets reads the events of those instructions only.
CREATE INDEX events_instruction ON events (instruction_id, seq);
