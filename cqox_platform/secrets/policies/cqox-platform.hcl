# Policy of the platform's runtime identity (AppRole `cqox-platform`): what assets, sensors and the CLI need
# to encrypt datasets and backups, rotate their key and get database credentials. Nothing administrative:
# no sys/mounts, no policy or auth changes (those need the bootstrap token, used only by `vault_config`).

# Envelope encryption of datasets and backups: fresh data keys, unwrap, rewrap after rotation.
path "transit/datakey/plaintext/cqox-datasets" { capabilities = ["update"] }
path "transit/decrypt/cqox-datasets"           { capabilities = ["update"] }
path "transit/rewrap/cqox-datasets"            { capabilities = ["update"] }
path "transit/keys/cqox-datasets"              { capabilities = ["read"] }
path "transit/datakey/plaintext/cqox-backups"  { capabilities = ["update"] }
path "transit/decrypt/cqox-backups"            { capabilities = ["update"] }
path "transit/rewrap/cqox-backups"             { capabilities = ["update"] }
path "transit/keys/cqox-backups"               { capabilities = ["read"] }

# Key rotation job: rotate and raise min_decryption_version; never delete or export. The config endpoint also
# sets `exportable`, `deletion_allowed`, `allow_plaintext_backup` (one-way switches that let the key leave Vault
# or be deleted), so Vault's own parameter constraint admits `min_decryption_version` and nothing else.
path "transit/keys/cqox-datasets/rotate" { capabilities = ["update"] }
path "transit/keys/cqox-datasets/config" {
  capabilities       = ["update"]
  allowed_parameters = { "min_decryption_version" = [] }
}

# Application secrets under secret/cqox/ only.
path "secret/data/cqox/*"     { capabilities = ["create", "read", "update"] }
path "secret/metadata/cqox/*" { capabilities = ["read", "list"] }

# Short-lived PostgreSQL credentials and their leases: the runtime login (DML only) for every table write, and
# the migrator login (schema owner) that only the database assets needing DDL use (cqox_platform/db/roles.py).
path "database/creds/cqox-platform" { capabilities = ["read"] }
path "database/creds/cqox-migrator" { capabilities = ["read"] }
path "sys/leases/renew"             { capabilities = ["update"] }
path "sys/leases/revoke"            { capabilities = ["update"] }
