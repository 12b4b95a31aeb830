"""WAL to and from the archive: pushing and fetching one segment, the asynchronous
pusher and its spool, the prefetcher that keeps replay fed, catch-up after a failover, and archiving status.

The WAL path (``archive_command`` / ``restore_command``) imports nothing from ``base``, ``restore`` or ``verify``
(an import-linter contract): it runs once per segment and must start fast and fail only for its own reasons."""
