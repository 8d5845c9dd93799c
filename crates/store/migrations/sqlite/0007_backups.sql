-- Each scheduled backup's outcome: the backup metrics and the BackupStale alert read it,
-- whichever process took the backup.
CREATE TABLE backups (
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    file        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX backups_finished ON backups(finished_at);
