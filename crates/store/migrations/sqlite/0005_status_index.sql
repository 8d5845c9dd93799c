-- Lists and counts by status (the console's filters) read an index, not every run.
CREATE INDEX runs_status ON runs(status, id);
