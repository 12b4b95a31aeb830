-- Backup repositories besides the platform's own (Barman Cloud, pgBackRest) are drilled and proven with the same
-- tables. Each restore point and drill names the repository it belongs to; the platform's own are 'cqox', so its
-- drill planner never picks a point captured for another repository's cluster.
ALTER TABLE restore_points ADD COLUMN repository TEXT NOT NULL DEFAULT 'cqox';
ALTER TABLE restore_drills ADD COLUMN repository TEXT NOT NULL DEFAULT 'cqox';
CREATE INDEX idx_restore_drills_repository ON restore_drills (repository, finished_at DESC);
