"""Backups: WAL archiving, base backups, restores, their verification, retention and the DR copy.

Sub-packages by job, each with one reason to change:

- ``archive``: where everything lives in S3 (layout, records, multipart uploads, the archiver's settings file);
- ``wal``: one segment to and from the archive, the asynchronous pusher, prefetch for replay, continuity;
- ``base``: taking a base backup (server-compressed, streamed, encrypted);
- ``restore``: putting a backup's files back and configuring recovery;
- ``verify``: restore points, drills and the verdicts computed from them.

``retention`` and ``dr_copy`` sit beside them because they act on the whole archive. This package's
``__init__`` imports nothing: ``wal-push``'s fast path imports ``backup.wal.push_client`` and must not pay for
the rest.
"""
