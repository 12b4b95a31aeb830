"""Putting a base backup back: the streamed restore (ranged GETs, decrypt, decompress, tar), checksums against
``backup_manifest`` while the bytes pass, and the recovery configuration of the restored cluster."""
