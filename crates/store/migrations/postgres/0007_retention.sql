-- Retention finds expired runs by final status and finish time, oldest first.
CREATE INDEX runs_finished ON runs(status, finished_at) WHERE finished_at IS NOT NULL;
