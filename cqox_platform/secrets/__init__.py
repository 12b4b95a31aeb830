"""Vault configuration as code: engines, keys, policies, AppRole, audit and the database secrets engine."""
