-- A claim marks a batch of tasks with one token and reads them back by it, in one statement
-- each, instead of one RETURNING row at a time (each row a round trip through the GIL).
CREATE INDEX tasks_token ON tasks (claim_token) WHERE claim_token IS NOT NULL;
