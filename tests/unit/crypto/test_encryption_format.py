"""The streaming format against its written specification, and every attack the spec lists."""

from __future__ import annotations

import io
import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from cqox_platform.crypto.stream import TAG_BYTES, ciphertext_size, decrypt_stream, encrypt_stream, read_header
from cqox_platform.errors import FormatError, IntegrityError
from tests.helpers import REPO_ROOT

SPEC = REPO_ROOT / "docs" / "encryption-format.md"
DEK = bytes(range(32))
PREFIX = bytes.fromhex("a1a2a3a4a5a6a7")


def _vectors() -> list[dict[str, str]]:
    blocks = re.findall(r"```vector\n(.*?)```", SPEC.read_text(), flags=re.S)
    vectors = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            fields[key.rstrip(":")] = value
        vectors.append(fields)
    return vectors


def test_spec_has_vectors():
    assert len(_vectors()) == 4
    assert [v["object_id"] for v in _vectors() if v.get("derive_key") == "yes"] == ["vectors/derived"]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["object_id"])
def test_code_reproduces_and_opens_the_spec_vectors(vector):
    plaintext = vector.get("plaintext", "").encode()
    out = io.BytesIO()
    derive = vector.get("derive_key") == "yes"
    encrypt_stream(
        io.BytesIO(plaintext), out, DEK, vector["object_id"], chunk_size=16, nonce_prefix=PREFIX, derive_key=derive
    )
    assert out.getvalue().hex() == vector["ciphertext"]
    back = io.BytesIO()
    decrypt_stream(io.BytesIO(bytes.fromhex(vector["ciphertext"])), back, DEK)
    assert back.getvalue() == plaintext


def test_first_chunk_follows_the_spec_with_bare_aes_gcm():
    """Recompute the two-chunk vector from the document's layout only, without the format code."""
    vector = next(v for v in _vectors() if v["object_id"] == "vectors/two-chunks")
    oid = vector["object_id"].encode()
    header = b"CQXE" + b"\x01" + b"\x00" + (16).to_bytes(4, "big") + PREFIX + len(oid).to_bytes(2, "big") + oid
    plaintext = vector["plaintext"].encode()
    sealed0 = AESGCM(DEK).encrypt(PREFIX + (0).to_bytes(4, "big") + b"\x00", plaintext[:16], header)
    sealed1 = AESGCM(DEK).encrypt(PREFIX + (1).to_bytes(4, "big") + b"\x01", plaintext[16:], header)
    assert (header + sealed0 + sealed1).hex() == vector["ciphertext"]


def test_a_shared_data_key_seals_each_object_under_a_key_of_its_own():
    """A DEK reused for many objects (the WAL pusher's cached keys) sets flag 0x01: each object's chunks are sealed
    under HKDF-SHA256(DEK, salt = nonce prefix, info = header), recomputed here from the document's text alone.
    Two objects under one DEK with the same nonce prefix still never share a (key, nonce) pair, the bare DEK
    opens nothing, and clearing the flag is caught (the header is every chunk's associated data)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from cqox_platform.crypto.stream import DERIVED_KEY

    def sealed(oid: str) -> bytes:
        out = io.BytesIO()
        encrypt_stream(io.BytesIO(b"w" * 40), out, DEK, oid, chunk_size=16, nonce_prefix=PREFIX, derive_key=True)
        return out.getvalue()

    a, b = sealed("wal/a"), sealed("wal/b")
    assert read_header(io.BytesIO(a)).flags == DERIVED_KEY
    header_len = len(a) - (40 + 3 * TAG_BYTES)
    header = a[:header_len]
    assert header[5] == 0x01
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=PREFIX, info=header).derive(DEK)
    first = a[header_len : header_len + 16 + TAG_BYTES]
    assert AESGCM(key).decrypt(PREFIX + (0).to_bytes(4, "big") + b"\x00", first, header) == b"w" * 16
    assert a[header_len:] != b[len(b) - (40 + 3 * TAG_BYTES) :]  # same DEK, same prefix, other object: other bytes
    assert _decrypt(a) == b"w" * 40
    with pytest.raises(Exception):  # noqa: B017 - any failure will do: the bare DEK is not the chunk key
        AESGCM(DEK).decrypt(PREFIX + (0).to_bytes(4, "big") + b"\x00", first, header)
    cleared = bytearray(a)
    cleared[5] = 0
    with pytest.raises(IntegrityError, match="failed authentication"):
        _decrypt(bytes(cleared))
    unknown = bytearray(a)
    unknown[5] = 0x02
    with pytest.raises(FormatError, match="flags"):
        _decrypt(bytes(unknown))


def _encrypt(plaintext: bytes, chunk_size: int = 16, oid: str = "obj/a", dek: bytes = DEK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, dek, oid, chunk_size=chunk_size)
    return out.getvalue()


def _decrypt(blob: bytes, dek: bytes = DEK, **kwargs) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, dek, **kwargs)
    return out.getvalue()


class _Trickle(io.RawIOBase):
    """A stream that returns at most 7 bytes per read, like a slow socket."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.data.read(min(n, 7) if n > 0 else 7)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300), st.integers(16, 64))
def test_round_trip_any_size_and_chunking(plaintext, chunk_size):
    blob = _encrypt(plaintext, chunk_size)
    assert len(blob) == ciphertext_size(len(plaintext), "obj/a", chunk_size)
    assert _decrypt(blob) == plaintext
    out = io.BytesIO()
    decrypt_stream(_Trickle(blob), out, DEK)
    assert out.getvalue() == plaintext


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_flipped_bit_is_detected(plaintext, data):
    blob = bytearray(_encrypt(plaintext))
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((IntegrityError, FormatError)):
        _decrypt(bytes(blob))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_truncation_is_detected(plaintext, data):
    blob = _encrypt(plaintext)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises((IntegrityError, FormatError)):
        _decrypt(blob[:cut])


def test_truncation_at_a_chunk_boundary_is_detected():
    blob = _encrypt(b"x" * 48)  # three full chunks
    header_len = len(blob) - 3 * (16 + TAG_BYTES)
    with pytest.raises(IntegrityError, match="chunk 1"):
        _decrypt(blob[: header_len + 2 * (16 + TAG_BYTES)])


def test_swapped_chunks_are_detected():
    blob = _encrypt(b"A" * 16 + b"B" * 16 + b"C" * 5)
    size = 16 + TAG_BYTES
    header_len = len(blob) - 2 * size - (5 + TAG_BYTES)
    body = blob[header_len:]
    swapped = blob[:header_len] + body[size : 2 * size] + body[:size] + body[2 * size :]
    with pytest.raises(IntegrityError, match="chunk 0"):
        _decrypt(swapped)


def test_chunks_spliced_from_another_object_under_the_same_key_are_detected():
    a = _encrypt(b"a" * 40, oid="obj/a")
    b = _encrypt(b"b" * 40, oid="obj/b")
    header_len = len(a) - (40 + 3 * TAG_BYTES)
    spliced = a[:header_len] + b[header_len : header_len + 16 + TAG_BYTES] + a[header_len + 16 + TAG_BYTES :]
    with pytest.raises(IntegrityError):
        _decrypt(spliced)


def test_trailing_garbage_is_detected():
    with pytest.raises(IntegrityError):
        _decrypt(_encrypt(b"data") + b"more")


def test_wrong_key_and_wrong_object_are_refused():
    blob = _encrypt(b"secret rows")
    with pytest.raises(IntegrityError, match="failed authentication"):
        _decrypt(blob, dek=bytes(32))
    with pytest.raises(IntegrityError, match="belongs to 'obj/a'"):
        _decrypt(blob, expected_object_id="obj/other")


def test_not_our_format_is_named():
    with pytest.raises(FormatError, match="bad magic"):
        _decrypt(b"PK\x03\x04 a zip file")
    blob = bytearray(_encrypt(b"x"))
    blob[4] = 9
    with pytest.raises(FormatError, match="version 9"):
        _decrypt(bytes(blob))
    assert read_header(io.BytesIO(_encrypt(b"x", oid="datasets/7/data.parquet"))).object_id.startswith("datasets/")


def test_bad_keys_and_parameters_are_refused():
    with pytest.raises(FormatError, match="32 bytes"):
        _encrypt(b"x", dek=b"short")
    with pytest.raises(FormatError, match="chunk size"):
        _encrypt(b"x", chunk_size=8)
