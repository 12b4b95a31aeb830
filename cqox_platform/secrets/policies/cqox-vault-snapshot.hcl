# Policy of the snapshot identity (AppRole `cqox-vault-snapshot`), used by the `vault_snapshot` asset: read a raft
# snapshot of the whole storage, and nothing else. No restore (that is a write to the same path), no Transit, no
# KV, no database credentials: a leaked secret-id yields barrier-encrypted snapshots, useless without the unseal
# material, which never sits beside them.
path "sys/storage/raft/snapshot" { capabilities = ["read"] }
