"""Taking a base backup: pg_basebackup compressed by the server, followed as it grows, envelope-encrypted and
streamed into a multipart upload, with a restore point captured right after it."""
