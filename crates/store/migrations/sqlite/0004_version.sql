-- The version (flotilla's, or engine.version) that started each run.
ALTER TABLE runs ADD COLUMN version TEXT;
