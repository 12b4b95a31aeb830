"""`cqox-platform encrypt | decrypt`: envelope encryption of a file with a Vault data key."""

from __future__ import annotations

from pathlib import Path

import click

import cqox_platform.cli.context as context


@click.command("encrypt")
@click.option("--in", "src", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", "dst", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--key", default="cqox-datasets", show_default=True, help="Vault Transit key wrapping the DEK.")
def encrypt_cmd(src: Path, dst: Path, key: str) -> None:
    """Encrypt a file with a fresh Vault data key; writes OUT and OUT.manifest.json."""
    from cqox_platform.crypto import encrypt_file

    manifest = encrypt_file(src, dst, context.vault().key_provider(key))
    click.echo(
        f"{dst}: {manifest.plaintext_bytes} bytes in {manifest.chunks} chunks, key {key} "
        f"v{manifest.key_version}; manifest {dst}.manifest.json"
    )


@click.command("decrypt")
@click.option("--in", "src", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", "dst", type=click.Path(dir_okay=False, path_type=Path), required=True)
def decrypt_cmd(src: Path, dst: Path) -> None:
    """Decrypt IN (with IN.manifest.json beside it) to OUT; OUT appears only if every check passed."""
    from cqox_platform.crypto.envelope import decrypt_file, load_manifest

    manifest = load_manifest(src)
    decrypt_file(src, dst, context.vault().key_provider(manifest.key_name), manifest)
    click.echo(f"{dst}: {manifest.plaintext_bytes} bytes, SHA-256 verified")
