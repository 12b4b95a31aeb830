-- Extensions the CQOx schema relies on (roadmap phase 1). gen_random_uuid() is core since PostgreSQL 13;
-- pgcrypto stays for digest()/hmac() in application SQL, pg_trgm for fuzzy dataset-name search.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
