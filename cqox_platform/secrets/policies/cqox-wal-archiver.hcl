# Policy of PostgreSQL's WAL archiver (AppRole `cqox-wal-archiver`), used by `cqox-platform wal-push` and
# `wal-fetch` running as the postgres OS user: make and unwrap data keys of the backups key, and read the S3
# credentials of the backup bucket. Nothing else: no rotation, no other keys, no database credentials.
path "transit/datakey/plaintext/cqox-backups" { capabilities = ["update"] }
path "transit/decrypt/cqox-backups"           { capabilities = ["update"] }
path "secret/data/cqox/backups/s3"            { capabilities = ["read"] }
