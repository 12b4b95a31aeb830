"""The pure parts of Vault recovery: snapshot names, retention, freshness, the unseal verdict, key comparison."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cqox_platform.errors import VaultRecoveryError
from cqox_platform.secrets import snapshots
from cqox_platform.secrets.unseal import UnsealMaterial, unseal_keys, unseal_verdict
from cqox_platform.secrets.vault_drill import Proof, compare_keys

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _snap(hours_ago: float, bucket: str = "b") -> snapshots.StoredSnapshot:
    taken = NOW - timedelta(hours=hours_ago)
    return snapshots.StoredSnapshot(bucket, snapshots.object_key(taken), taken, 100)


def test_object_names_carry_the_time_and_sort_by_it():
    taken = datetime(2026, 12, 4, 8, 5, 6, 123456, tzinfo=UTC)
    key = snapshots.object_key(taken)
    assert key == "vault/snapshots/20261204T080506.123456Z.snap"
    assert snapshots.taken_at_of(key) == taken
    assert snapshots.taken_at_of("vault/snapshots/notes.txt") is None
    keys = [snapshots.object_key(NOW - timedelta(minutes=m)) for m in (5, 600, 61)]
    assert sorted(keys) == [snapshots.object_key(NOW - timedelta(minutes=m)) for m in (600, 61, 5)]


def test_retention_deletes_only_old_snapshots_beyond_the_newest_n():
    listed = [_snap(h) for h in (400, 300, 100, 3, 2, 1)]
    gone = snapshots.expired(listed, keep=2, max_age=timedelta(days=7), now=NOW)
    assert [s.key for s in gone] == [s.key for s in listed[:2]]  # 400 h and 300 h; 100 h is younger than 7 days


def test_retention_never_ages_away_the_newest_snapshots_even_when_all_are_old():
    listed = [_snap(h) for h in (900, 800, 700)]
    gone = snapshots.expired(listed, keep=2, max_age=timedelta(days=1), now=NOW)
    assert [s.key for s in gone] == [listed[0].key]


def test_freshness_fails_closed_on_a_missing_or_stale_copy():
    target = 4500.0
    fresh = snapshots.freshness({"p": _snap(0.5, "p"), "d": _snap(0.5, "d")}, target, NOW)
    assert fresh.passed and fresh.age_seconds == pytest.approx(1800)
    stale = snapshots.freshness({"p": _snap(0.5, "p"), "d": _snap(2, "d")}, target, NOW)
    assert not stale.passed and "s3://d/vault/snapshots/" in stale.description
    missing = snapshots.freshness({"p": _snap(0.5, "p"), "d": None}, target, NOW)
    assert not missing.passed and "s3://d/vault/snapshots/ holds no Vault snapshot" in missing.description
    assert not snapshots.freshness({}, target, NOW).passed


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.closed = chunks, False

    def iter_content(self, _size: int):
        yield from self.chunks

    def close(self) -> None:
        self.closed = True


def test_a_snapshot_is_streamed_to_an_owner_only_file_with_its_hash(tmp_path: Path):
    import hashlib

    body = [b"\x1f\x8b" + b"x" * 10, b"y" * 5]
    response = _Response(body)
    local = snapshots.take_snapshot(response, tmp_path, NOW)
    assert local.size == 17 and local.sha256 == hashlib.sha256(b"".join(body)).hexdigest()
    assert local.path.read_bytes() == b"".join(body) and (local.path.stat().st_mode & 0o077) == 0
    assert response.closed
    meta = snapshots.snapshot_metadata(local, {"k": {"latest_version": 2, "min_decryption_version": 1}})
    assert meta["sha256"] == local.sha256 and meta["size"] == "17"
    assert json.loads(meta["transit-keys"]) == {"k": {"latest_version": 2, "min_decryption_version": 1}}


def test_a_body_that_is_not_a_snapshot_is_refused_and_leaves_no_file(tmp_path: Path):
    with pytest.raises(VaultRecoveryError, match="not a raft snapshot"):
        snapshots.take_snapshot(_Response([b'{"errors":[]}']), tmp_path, NOW)
    assert list(tmp_path.iterdir()) == []


def _material(**kw) -> UnsealMaterial:
    return UnsealMaterial(**{"mode": None, "vault_addr": "https://127.0.0.1:8200", **kw})


def test_the_unseal_verdict_fails_without_a_mode_and_names_the_variable():
    verdict = unseal_verdict(_material())
    assert not verdict.passed and verdict.mode == "none" and "CQOX_VAULT_UNSEAL_MODE" in verdict.description


@pytest.mark.parametrize(
    ("holders", "threshold", "passed"),
    [
        ("alice,bob,carol", 2, True),
        ("alice", 1, True),
        ("alice,bob", 1, False),
        ("alice,alice", 2, False),
        ("alice,bob", 3, False),
        ("", 2, False),
        ("alice,bob", None, False),
    ],
)
def test_shamir_needs_named_distinct_holders_and_a_sensible_threshold(holders, threshold, passed):
    verdict = unseal_verdict(_material(mode="shamir", shamir_holders=holders, shamir_threshold=threshold))
    assert verdict.passed is passed, verdict.description


def test_transit_auto_unseal_must_be_another_vault():
    good = unseal_verdict(_material(mode="transit", transit="https://vault.other:8200/transit/keys/unseal"))
    assert good.passed
    same = unseal_verdict(_material(mode="transit", transit="https://127.0.0.1:8200/transit/keys/unseal"))
    assert not same.passed and "same Vault" in same.description
    assert not unseal_verdict(_material(mode="transit", transit="vault.other/unseal")).passed


def test_kms_needs_a_key_and_a_key_file_is_refused_in_production(tmp_path: Path):
    assert unseal_verdict(_material(mode="kms", kms_key="arn:aws:kms:eu-west-1:1:key/abc")).passed
    assert not unseal_verdict(_material(mode="kms")).passed
    key_file = tmp_path / "init.json"
    key_file.write_text(json.dumps({"unseal_keys_b64": ["a2V5"], "root_token": "s.x"}))
    local = unseal_verdict(_material(mode="key_file", key_file=key_file))
    assert local.passed and "s.x" not in local.description
    assert not unseal_verdict(_material(mode="key_file", key_file=key_file, environment="production")).passed
    assert not unseal_verdict(_material(mode="key_file", key_file=tmp_path / "missing.json")).passed


def test_unseal_keys_errors_never_carry_the_file_content(tmp_path: Path):
    bad = tmp_path / "init.json"
    bad.write_text("secret-not-json")
    with pytest.raises(VaultRecoveryError) as caught:
        unseal_keys(bad)
    assert "secret-not-json" not in str(caught.value)


def test_key_comparison_fails_on_a_missing_key_or_another_version():
    want = {
        "a": {"latest_version": 3, "min_decryption_version": 2},
        "b": {"latest_version": 1, "min_decryption_version": 1},
    }
    proof = Proof()
    compare_keys(want, {"a": {"latest_version": 3, "min_decryption_version": 2}, "b": None}, proof)
    assert not proof.passed and proof.problems == ["Transit key b is missing from the restored Vault"]
    proof = Proof()
    compare_keys(want, {"a": {"latest_version": 2, "min_decryption_version": 2}, "b": want["b"]}, proof)
    assert not proof.passed and "Transit key a restored as" in proof.problems[0]
    proof = Proof()
    compare_keys(want, dict(want), proof)
    assert proof.passed and all(row["ok"] for row in proof.keys)
