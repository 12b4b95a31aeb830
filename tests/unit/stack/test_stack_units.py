"""Pieces of the stack that need no running service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cqox_platform.errors import MissingBinaryError
from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.config import DEFAULT_PORTS, StackConfig
from cqox_platform.stack.postgres import scram_sha256_verifier
from cqox_platform.stack.process import find_binary


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=64))
def test_scram_verifier_proves_the_password_without_containing_it(password):
    verifier = scram_sha256_verifier(password)
    assert password not in verifier
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt_b64 = params.split(":")
    stored_b64, server_b64 = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt_b64), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", "sha256").digest()
    assert scram_sha256_verifier(password) != verifier  # fresh salt each time


def test_config_persists_ports_and_port_base(tmp_path, monkeypatch):
    monkeypatch.delenv("CQOX_STACK_DIR", raising=False)
    config = StackConfig.load(tmp_path / "s", port_base=41000)
    assert list(config.ports.values()) == list(range(41000, 41000 + len(DEFAULT_PORTS)))
    config.root.mkdir()
    config.save()
    monkeypatch.setenv("CQOX_PG_PORT", "1234")  # an existing stack keeps the ports it started with
    again = StackConfig.load(tmp_path / "s")
    assert again.ports == config.ports


def test_env_var_overrides_a_port_of_a_new_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("CQOX_PROMETHEUS_PORT", "49999")
    assert StackConfig.load(tmp_path / "new").ports["prometheus"] == 49999


def test_missing_binary_names_its_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinaryError, match="Debian package prometheus-pushgateway"):
        find_binary("prometheus-pushgateway")


def test_tls_material_verifies_for_localhost_and_loopback(tmp_path):
    files = ensure_tls(tmp_path)
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    for name in ("localhost", "127.0.0.1"):
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(files.ca_cert),
                "-verify_hostname" if name == "localhost" else "-verify_ip",
                name,
                str(files.server_cert),
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    before = files.server_cert.read_bytes()
    assert ensure_tls(tmp_path).server_cert.read_bytes() == before  # reused, not regenerated


def test_env_script_survives_shell_quoting(tmp_path):
    from cqox_platform.stack import Stack

    stack = Stack(StackConfig(root=tmp_path / "dir with space", with_dagster=False))
    script = stack.env_script()
    out = subprocess.run(["bash", "-c", script + 'printf %s "$CQOX_STACK_DIR"'], capture_output=True, text=True)
    assert out.stdout == str(tmp_path / "dir with space")
    assert all(line.startswith("export ") for line in script.splitlines())
    assert shlex.split(script)
