"""How a restored Vault gets unsealed: the recovery material an operator keeps outside both sites.

A raft snapshot is encrypted by Vault's barrier, whose key is itself sealed: restoring one into a new server
gives a sealed Vault until the original unseal material is presented. So the snapshot is worth exactly as much
as that material, and the material must survive anything that takes the snapshot's site with it:

- ``shamir``: unseal shares, each held by a named person (a threshold of them unseals);
- ``transit``: auto-unseal through another Vault's Transit key, in a third place;
- ``kms``: auto-unseal through a cloud KMS key;
- ``key_file``: the local stack's own key file (development only: it sits next to the data it unseals).

``unseal_verdict`` says which mode is configured and fails when none is, or when what a mode needs is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cqox_platform.errors import VaultRecoveryError


@dataclass(frozen=True)
class UnsealMaterial:
    """The unseal settings, as the settings contract holds them (``Settings.vault_unseal_*``)."""

    mode: str | None
    shamir_holders: str | None = None
    shamir_threshold: int | None = None
    transit: str | None = None
    kms_key: str | None = None
    key_file: Path | None = None
    vault_addr: str | None = None
    environment: str = "local"

    @classmethod
    def from_settings(cls, settings: Any) -> UnsealMaterial:
        return cls(
            mode=settings.vault_unseal_mode,
            shamir_holders=settings.vault_unseal_shamir_holders,
            shamir_threshold=settings.vault_unseal_shamir_threshold,
            transit=settings.vault_unseal_transit,
            kms_key=settings.vault_unseal_kms_key,
            key_file=settings.vault_unseal_key_file,
            vault_addr=settings.vault_addr,
            environment=settings.environment,
        )

    @property
    def holders(self) -> list[str]:
        return [h.strip() for h in (self.shamir_holders or "").split(",") if h.strip()]


@dataclass(frozen=True)
class UnsealVerdict:
    passed: bool
    mode: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _fail(mode: str, why: str) -> UnsealVerdict:
    return UnsealVerdict(False, mode, why)


def unseal_verdict(m: UnsealMaterial) -> UnsealVerdict:
    """Which unseal mode is configured, and whether it is complete; fails closed when none is."""
    if not m.mode:
        return _fail(
            "none",
            "no unseal mode is configured (CQOX_VAULT_UNSEAL_MODE): a Vault snapshot cannot be unsealed after a "
            "restore, so every backup would stay unreadable after a site loss. Set it to shamir (with "
            "CQOX_VAULT_UNSEAL_SHAMIR_HOLDERS and _THRESHOLD), transit (CQOX_VAULT_UNSEAL_TRANSIT) or kms "
            "(CQOX_VAULT_UNSEAL_KMS_KEY); see docs/vault-recovery.md.",
        )
    if m.mode == "shamir":
        holders, threshold = m.holders, m.shamir_threshold
        if not holders or threshold is None:
            return _fail(m.mode, "mode shamir needs CQOX_VAULT_UNSEAL_SHAMIR_HOLDERS (names) and _THRESHOLD.")
        if len(set(holders)) != len(holders):
            return _fail(m.mode, f"a Shamir holder is named twice ({', '.join(holders)}): one share per person.")
        if not 1 <= threshold <= len(holders) or (len(holders) > 1 and threshold < 2):
            return _fail(
                m.mode,
                f"threshold {threshold} does not fit {len(holders)} holder(s): it must be 2..{len(holders)} "
                "(one share alone must not unseal when several people hold them).",
            )
        return UnsealVerdict(
            True,
            m.mode,
            f"Shamir: {threshold} of {len(holders)} shares unseal ({', '.join(holders)}); they must bring them to a "
            "restore, so the restore drill of a Shamir installation is run with them.",
            {"holders": holders, "threshold": threshold},
        )
    if m.mode == "transit":
        parsed = urlparse(m.transit or "")
        if parsed.scheme != "https" or not parsed.hostname or "/keys/" not in parsed.path:
            return _fail(
                m.mode, "mode transit needs CQOX_VAULT_UNSEAL_TRANSIT as https://host:port/<mount>/keys/<name>."
            )
        own = urlparse(m.vault_addr or "")
        if (own.hostname, own.port) == (parsed.hostname, parsed.port):
            return _fail(
                m.mode, "the Transit key that auto-unseals Vault is on the same Vault: it would be lost with it."
            )
        return UnsealVerdict(True, m.mode, f"auto-unseal through the Transit key {m.transit}", {"transit": m.transit})
    if m.mode == "kms":
        if not (m.kms_key or "").strip():
            return _fail(m.mode, "mode kms needs CQOX_VAULT_UNSEAL_KMS_KEY (the KMS key's ARN or id).")
        return UnsealVerdict(True, m.mode, f"auto-unseal through the KMS key {m.kms_key}", {"kms_key": m.kms_key})
    if m.mode == "key_file":
        if m.environment == "production":
            return _fail(
                m.mode,
                "mode key_file is for the local stack only: a key file kept with Vault's data is lost with it. "
                "Use shamir, transit or kms in production.",
            )
        try:
            keys = unseal_keys(m.key_file)
        except VaultRecoveryError as exc:
            return _fail(m.mode, str(exc))
        return UnsealVerdict(
            True,
            m.mode,
            f"the local stack's key file {m.key_file} ({len(keys)} key(s)); development only",
            {"key_file": str(m.key_file)},
        )
    return _fail(str(m.mode), f"unknown unseal mode {m.mode!r}; use shamir, transit, kms or key_file.")


def unseal_keys(key_file: Path | None) -> list[str]:
    """The base64 unseal keys in a key file (``bao operator init -format=json``'s ``unseal_keys_b64``, as the local
    stack writes it). Only the keys are read; the message never carries them."""
    if key_file is None:
        raise VaultRecoveryError("mode key_file needs CQOX_VAULT_UNSEAL_KEY_FILE (the unseal key file).")
    try:
        keys = json.loads(Path(key_file).read_text())["unseal_keys_b64"]
    except OSError as exc:
        raise VaultRecoveryError(f"the unseal key file {key_file} cannot be read ({exc.strerror}).") from None
    except (ValueError, KeyError, TypeError):
        raise VaultRecoveryError(f"the unseal key file {key_file} is not JSON with `unseal_keys_b64`.") from None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise VaultRecoveryError(f"the unseal key file {key_file} lists no unseal key.")
    return keys
