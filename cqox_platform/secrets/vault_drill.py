"""What a restored Vault must prove: the platform's Transit keys are all there, at the versions the snapshot was
taken with, and they unwrap the data keys of real objects in the bucket (the newest base backup, WAL segment and
dataset), found from S3 alone, so a drill that has only a bucket and the escrow can run it.

Fails closed: a missing key, another version, a data key that does not unwrap, or no base backup or WAL segment
to try is a failure with its reason. A bucket that has never held a dataset has none to try: that is reported,
not failed (nothing encrypted is lost with it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions

from cqox_platform.crypto.envelope import MANIFEST_SUFFIX, Manifest
from cqox_platform.errors import CqoxError

#: The kinds of object whose data key the drill unwraps, where they live, and whether one must exist.
SAMPLES: dict[str, tuple[str, str, bool]] = {
    "base backup": ("postgres/", "/base/", True),
    "WAL segment": ("postgres/", "/wal/", True),
    "dataset": ("datasets/", "/", False),
}


@dataclass(frozen=True)
class WrappedSample:
    kind: str
    where: str
    key_name: str
    wrapped_dek: str

    @property
    def key_version(self) -> int:
        return int(self.wrapped_dek.split(":")[1].removeprefix("v"))


def newest_manifests(s3: Any, bucket: str) -> dict[str, WrappedSample | None]:
    """The newest manifest (by upload time) of each kind in ``SAMPLES``; ``None`` where the bucket has none."""
    found: dict[str, WrappedSample | None] = {}
    for kind, (prefix, part, _required) in SAMPLES.items():
        newest: dict[str, Any] | None = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                wanted = key.endswith(MANIFEST_SUFFIX) and part in key.removeprefix(prefix)
                if wanted and (newest is None or item["LastModified"] > newest["LastModified"]):
                    newest = item
        if newest is None:
            found[kind] = None
            continue
        where = f"s3://{bucket}/{newest['Key']}"
        body = s3.get_object(Bucket=bucket, Key=newest["Key"])["Body"].read()
        manifest = Manifest.from_json(body, where=where)
        found[kind] = WrappedSample(kind, where, manifest.key_name, manifest.wrapped_dek)
    return found


def key_versions(read_key: Any, names: list[str]) -> dict[str, dict[str, int]]:
    """``{name: {latest_version, min_decryption_version}}`` through ``read_key(name) -> Transit's key data``."""
    result = {}
    for name in names:
        data = read_key(name)
        result[name] = {
            "latest_version": int(data["latest_version"]),
            "min_decryption_version": int(data["min_decryption_version"]),
        }
    return result


@dataclass
class Proof:
    """What the restored Vault showed; ``problems`` empty means it passed."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def compare_keys(expected: dict[str, dict[str, int]], restored: dict[str, dict[str, int] | None], proof: Proof) -> None:
    """Each expected key present in the restored Vault with the same latest and minimum decryption versions."""
    for name, want in sorted(expected.items()):
        got = restored.get(name)
        row = {"key": name, "expected": want, "restored": got}
        if got is None:
            proof.problems.append(f"Transit key {name} is missing from the restored Vault")
            row["ok"] = False
        elif got != want:
            proof.problems.append(f"Transit key {name} restored as {got}, expected {want}")
            row["ok"] = False
        else:
            row["ok"] = True
        proof.keys.append(row)


def prove(
    client: hvac.Client,
    expected: dict[str, dict[str, int]],
    samples: dict[str, WrappedSample | None],
    transit_mount: str = "transit",
) -> Proof:
    """Check the restored Vault behind ``client`` against ``expected`` key versions; unwrap each sample's data key."""
    proof = Proof()
    restored: dict[str, dict[str, int] | None] = {}
    for name in expected:
        try:
            restored[name] = key_versions(
                lambda n: client.secrets.transit.read_key(name=n, mount_point=transit_mount)["data"], [name]
            )[name]
        except hvac.exceptions.InvalidPath:
            restored[name] = None
    compare_keys(expected, restored, proof)
    for kind, sample in samples.items():
        required = SAMPLES.get(kind, ("", "", True))[2]
        if sample is None:
            proof.samples.append({"kind": kind, "object": None, "key": None, "unwrapped": False})
            if required:
                proof.problems.append(f"no {kind} manifest found in the bucket: nothing to prove the keys against")
            continue
        row: dict[str, Any] = {"kind": kind, "object": sample.where, "key": f"{sample.key_name} v{sample.key_version}"}
        try:
            plaintext = client.secrets.transit.decrypt_data(
                name=sample.key_name, ciphertext=sample.wrapped_dek, mount_point=transit_mount
            )["data"]["plaintext"]
            if len(base64.b64decode(plaintext)) != 32:
                raise CqoxError("the unwrapped data key is not 256 bits")
            row["unwrapped"] = True
        except (hvac.exceptions.VaultError, CqoxError, ValueError) as exc:
            row["unwrapped"] = False
            proof.problems.append(
                f"the restored Vault cannot unwrap the data key of {sample.where} ({sample.key_name} "
                f"v{sample.key_version}): {type(exc).__name__}"
            )
        proof.samples.append(row)
    return proof
