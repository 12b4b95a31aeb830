"""The PostgreSQL client of the platform, without Dagster."""
