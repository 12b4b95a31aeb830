-- Extensions the CQOx schema relies on (roadmap phase 1). pg_trgm backs fuzzy dataset-name search.
-- gen_random_uuid() is core since PostgreSQL 13. The roadmap's pgcrypto (pgp_sym_encrypt with the key as a
-- SQL argument) is deliberately not used: keys passed in SQL reach statement logs and pgAudit. Data is
-- encrypted by the application with envelope encryption and Vault Transit instead (docs, DESIGN.md).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
