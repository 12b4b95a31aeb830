"""The stack's S3 server stops on SIGTERM while clients hold keep-alive connections.

Every client (boto3 in the platform, the archiver, the tests) keeps its connection open in a pool, and uvicorn's
graceful shutdown waits for open connections to close: without a bound, ``stack down`` waited out its 30 s
timeout and then killed the server, on every stack a test session or an operator stopped.
"""

from __future__ import annotations

import shutil
import signal
import sys

import boto3
from botocore.config import Config

from cqox_platform.pgserver import free_port
from cqox_platform.stack.certs import ensure_tls, tls_files
from cqox_platform.stack.process import spawn, stop_pid, wait_until
from tests.helpers import make_world_traversable_tmpdir


def test_sigterm_stops_the_server_while_a_client_keeps_its_connection_open() -> None:
    root = make_world_traversable_tmpdir("cqox-test-s3stop-")
    try:
        ensure_tls(root / "tls")
        tls = tls_files(root / "tls")
        port = free_port()
        (root / "data").mkdir()
        log = root / "s3.log"
        env = {
            "PATH": "/usr/bin:/bin",
            "NANIO_DATA_DIR": str(root / "data"),
            "NANIO_ACCESS_KEY": "stop-test",
            "NANIO_SECRET_KEY": "stop-test-secret-key",
            "NANIO_REGION": "us-east-1",
        }
        argv = [sys.executable, "-m", "cqox_platform.stack.s3_server", "127.0.0.1", str(port)]
        pid = spawn([*argv, str(tls.server_cert), str(tls.server_key)], log_path=log, env=env)
        client = boto3.client(
            "s3",
            endpoint_url=f"https://127.0.0.1:{port}",
            aws_access_key_id=env["NANIO_ACCESS_KEY"],
            aws_secret_access_key=env["NANIO_SECRET_KEY"],
            region_name="us-east-1",
            verify=str(tls.ca_cert),
            config=Config(retries={"max_attempts": 1}),
        )

        def answers() -> bool:
            try:
                client.list_buckets()
                return True
            except Exception:
                return False

        wait_until(answers, timeout=60, what="S3 server", log_path=log)
        # The client's pooled connection stays open; the server must still stop on SIGTERM alone.
        killed = stop_pid(pid, sig=signal.SIGTERM, timeout=20)
        assert not killed, f"the S3 server ignored SIGTERM with a client connected; its log:\n{log.read_text()}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
