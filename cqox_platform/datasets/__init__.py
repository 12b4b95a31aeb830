"""Encrypted CQOx datasets: validation, profiling, envelope-encrypted storage in S3, key rotation."""
