"""The archive in S3: its key layout, WAL file names and timeline histories (the vocabulary every other part of
``backup`` speaks), the backup records written last, multipart uploads, and the settings file that ``wal-push`` /
``wal-fetch`` read as PostgreSQL's OS user."""
