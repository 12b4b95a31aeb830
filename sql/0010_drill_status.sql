-- Issue 13 item 4: a drill verifies a backup only when it replayed to a captured restore point and compared the
-- CQOX database with it. Others are 'partial' (restored and started, nothing compared) and verify nothing.
-- `passed` keeps its readers and now means exactly status = 'passed'. Numbered 0010: 0009 is taken on another
-- branch (canary guard); the runner applies any missing version, in order.
ALTER TABLE restore_drills ADD COLUMN status TEXT;
-- Drills recorded before this distinction: a passing one that compared no tables proved nothing either.
UPDATE restore_drills SET status = CASE
    WHEN NOT passed THEN 'failed'
    WHEN target_kind = 'restore_point' AND COALESCE(tables_checked, 0) > 0 THEN 'passed'
    ELSE 'partial'
END;
UPDATE restore_drills SET passed = false WHERE status = 'partial';
ALTER TABLE restore_drills
    ALTER COLUMN status SET NOT NULL,
    ADD CONSTRAINT restore_drills_status_check CHECK (status IN ('passed', 'partial', 'failed')),
    ADD CONSTRAINT restore_drills_passed_is_status CHECK (passed = (status = 'passed'));
CREATE INDEX idx_restore_drills_verified ON restore_drills (backup_id) WHERE status = 'passed';
