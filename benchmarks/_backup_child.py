"""One base backup in a process of its own, so the benchmark can sample its memory and its local work directory.

``create_base_backup`` is the platform's entry point (the backup asset runs the same call inside its run
worker); run in the benchmark's own process, its peak RSS would be mixed with the benchmark's. Prints, as its
last line, a JSON object with the backup's record and the seconds ``create_base_backup`` took (imports and the
Vault login excluded, as when the benchmark timed the call in-process).

    python -m benchmarks._backup_child --system-id bench-<sysid> --workdir-parent DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import boto3

from benchmarks._pgbackrest import stack_vault
from cqox_platform.backup.archive.store import Archive
from cqox_platform.backup.base.create import create_base_backup
from cqox_platform.pgserver import pg_bindir
from cqox_platform.stack.s3 import client_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system-id", required=True, help="the archive's key in the stack's bucket (``Archive``)")
    parser.add_argument("--workdir-parent", required=True, type=Path, help="where pg_basebackup's output lands")
    args = parser.parse_args()
    s3 = boto3.client("s3", endpoint_url=os.environ["CQOX_S3_ENDPOINT"], config=client_config())
    archive = Archive(s3, os.environ["CQOX_S3_BUCKET"], args.system_id)
    provider = stack_vault().key_provider("cqox-backups")
    started = time.perf_counter()
    record = create_base_backup(
        archive,
        provider,
        dsn=os.environ["CQOX_PG_DSN"],
        pg_basebackup=str(pg_bindir() / "pg_basebackup"),
        workdir_parent=args.workdir_parent,
    )
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "record": asdict(record)}), flush=True)


if __name__ == "__main__":
    main()
