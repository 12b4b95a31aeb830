"""Envelope encryption with real Vault data keys: the CLI round trip and every way a read must fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cqox_platform.crypto.envelope import decrypt_file, encrypt_file, load_manifest, manifest_path
from cqox_platform.errors import IntegrityError, ManifestMismatchError, VaultError
from cqox_platform.resources.vault import VaultResource
from tests.helpers import vault_admin

CLI = [sys.executable, "-m", "cqox_platform.cli"]


def _cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120)


@pytest.fixture
def plain_file(tmp_path: Path) -> Path:
    path = tmp_path / "dataset.csv"
    path.write_bytes(os.urandom(2_500_000) + b"\nend\n")
    return path


def test_cli_round_trip_is_bit_exact(stack, vault_configured, plain_file, tmp_path):
    enc, out = tmp_path / "dataset.enc", tmp_path / "back.csv"
    result = _cli(stack, "encrypt", "--in", str(plain_file), "--out", str(enc))
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(enc)
    assert manifest.wrapped_dek.startswith("vault:v") and manifest.chunks == 3
    assert plain_file.read_bytes() not in enc.read_bytes()
    result = _cli(stack, "decrypt", "--in", str(enc), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == plain_file.read_bytes()


def test_cli_refuses_a_tampered_object_and_writes_nothing(stack, vault_configured, plain_file, tmp_path):
    enc, out = tmp_path / "dataset.enc", tmp_path / "back.csv"
    assert _cli(stack, "encrypt", "--in", str(plain_file), "--out", str(enc)).returncode == 0
    blob = bytearray(enc.read_bytes())
    blob[1_500_000] ^= 0x40
    enc.write_bytes(bytes(blob))
    result = _cli(stack, "decrypt", "--in", str(enc), "--out", str(out))
    assert result.returncode == 1
    assert "chunk 1" in result.stderr and "failed authentication" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".back.csv.*")) == []  # no temporary left behind


def test_manifest_from_another_object_is_refused(stack, vault_configured, plain_file, tmp_path):
    vault = vault_admin(stack).key_provider("cqox-datasets")
    a, b = tmp_path / "a.enc", tmp_path / "b.enc"
    encrypt_file(plain_file, a, vault)
    encrypt_file(plain_file, b, vault)
    manifest_path(a).write_bytes(manifest_path(b).read_bytes())
    with pytest.raises(ManifestMismatchError, match="another one"):
        decrypt_file(a, tmp_path / "out", vault)


def test_missing_manifest_and_truncated_object(stack, vault_configured, plain_file, tmp_path):
    vault = vault_admin(stack).key_provider("cqox-datasets")
    enc = tmp_path / "x.enc"
    encrypt_file(plain_file, enc, vault)
    enc.write_bytes(enc.read_bytes()[: 1_048_576 + 16 + 40])
    with pytest.raises(IntegrityError):
        decrypt_file(enc, tmp_path / "out", vault)
    manifest_path(enc).unlink()
    with pytest.raises(Exception, match="manifest"):
        decrypt_file(enc, tmp_path / "out", vault)
    assert not (tmp_path / "out").exists()


def test_retired_key_version_is_a_clear_error(stack, vault_configured, plain_file, tmp_path):
    admin: VaultResource = vault_admin(stack)
    admin.call(
        "creating a scratch key",
        lambda: admin.client().secrets.transit.create_key(name="scratch-envelope", key_type="aes256-gcm96"),
    )
    provider = admin.key_provider("scratch-envelope")
    enc = tmp_path / "old.enc"
    encrypt_file(plain_file, enc, provider)
    version = admin.rotate("scratch-envelope")
    admin.set_min_decryption_version("scratch-envelope", version)
    with pytest.raises(VaultError, match="too old"):
        decrypt_file(enc, tmp_path / "out", provider)
    assert not (tmp_path / "out").exists()


def test_unknown_key_version_is_a_clear_error(stack, vault_configured, plain_file, tmp_path):
    from cqox_platform.crypto.envelope import Manifest

    vault = vault_admin(stack).key_provider("cqox-datasets")
    enc = tmp_path / "x.enc"
    manifest = encrypt_file(plain_file, enc, vault)
    forged = manifest.with_wrapped_dek("vault:v99:" + manifest.wrapped_dek.split(":", 2)[2])
    manifest_path(enc).write_text(forged.to_json())
    assert isinstance(load_manifest(enc), Manifest)
    with pytest.raises(VaultError, match="too new"):
        decrypt_file(enc, tmp_path / "out", vault)
    assert not (tmp_path / "out").exists()
