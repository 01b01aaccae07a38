-- A deployment's instructions in id order (pages of its targets) without
-- sorting them all; replaces the index on deployment_id alone.
CREATE INDEX instructions_deployment_id ON instructions (deployment_id, id);
DROP INDEX instructions_deployment;
