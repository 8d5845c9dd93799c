-- Each scheduled backup's outcome: the backup metrics and the BackupStale alert read it,
-- whichever process took the backup.
CREATE TABLE backups (
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    file        TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    error       TEXT
);
CREATE INDEX backups_finished ON backups(finished_at);
