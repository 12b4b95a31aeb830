"""Envelope crypto: streaming format vs one-shot AESGCM on the same data, in one run, plus peak RSS growth.

Target (issue 3): streaming at least 0.8x one-shot throughput for encrypt and decrypt; RSS growth of the
streaming path under 64 MiB. The format is measured as one-shot AESGCM is, without hashing; the manifest's
plaintext SHA-256 (datasets record it) is measured separately because it costs about as much as AES-GCM.
Each measurement runs in a fresh subprocess so its peak RSS is its own. The
streaming path reads a file and writes to a counting sink (no disk write), the one-shot path works on bytes
already in memory, which favours the anchor.

    python -m benchmarks.envelope_crypto [--mib 1024]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cqox_platform.crypto.stream import decrypt_stream, encrypt_stream

DEK = os.urandom(32)


class Sink(io.RawIOBase):
    """Counts bytes written and keeps none, so the benchmark measures crypto, not the disk."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.count += len(b)
        return len(b)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, path: str, dek_hex: str) -> None:
    dek = bytes.fromhex(dek_hex)
    size = os.path.getsize(path)
    base = _rss_mib()
    hashed = mode.endswith("+sha256")
    if mode.startswith("stream-encrypt"):
        with open(path, "rb") as src:
            started = time.perf_counter()
            encrypt_stream(src, Sink(), dek, "bench/object", hash_plaintext=hashed)
            elapsed = time.perf_counter() - started
    elif mode.startswith("stream-decrypt"):
        with open(path, "rb") as src:
            started = time.perf_counter()
            decrypt_stream(src, Sink(), dek, hash_plaintext=hashed)
            elapsed = time.perf_counter() - started
    else:
        data = Path(path).read_bytes()
        base = _rss_mib()
        aead, nonce = AESGCM(dek), os.urandom(12)
        started = time.perf_counter()
        sealed = aead.encrypt(nonce, data, None)
        encrypt_s = time.perf_counter() - started
        del data
        started = time.perf_counter()
        aead.decrypt(nonce, sealed, None)
        elapsed = time.perf_counter() - started
        print(json.dumps({"encrypt_s": encrypt_s, "decrypt_s": elapsed, "bytes": size}))
        return
    print(json.dumps({"seconds": elapsed, "bytes": size, "rss_growth_mib": _rss_mib() - base}))


def _run(mode: str, path: Path, dek_hex: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.envelope_crypto", "--child", mode, str(path), dek_hex],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    dek_hex = DEK.hex()
    with tempfile.TemporaryDirectory() as tmp:
        plain, sealed = Path(tmp) / "plain.bin", Path(tmp) / "sealed.bin"
        print(f"writing {args.mib} MiB of random data ...", flush=True)
        with open(plain, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(1 << 20))
        with open(plain, "rb") as src, open(sealed, "wb") as dst:
            encrypt_stream(src, dst, DEK, "bench/object")
        oneshot = _run("oneshot", plain, dek_hex)
        enc = _run("stream-encrypt", plain, dek_hex)
        dec = _run("stream-decrypt", sealed, dek_hex)
        enc_h = _run("stream-encrypt+sha256", plain, dek_hex)
        dec_h = _run("stream-decrypt+sha256", sealed, dek_hex)
    mib = args.mib
    one_enc, one_dec = mib / oneshot["encrypt_s"], mib / oneshot["decrypt_s"]
    st_enc, st_dec = mib / enc["seconds"], mib / dec["seconds"]
    print(f"one-shot AESGCM  encrypt {one_enc:8.0f} MiB/s   decrypt {one_dec:8.0f} MiB/s   (anchor)")
    print(f"streaming format encrypt {st_enc:8.0f} MiB/s   decrypt {st_dec:8.0f} MiB/s")
    print(f"ratio encrypt {st_enc / one_enc:.2f}x, decrypt {st_dec / one_dec:.2f}x (target >= 0.8x)")
    print(
        f"with the manifest's SHA-256: encrypt {mib / enc_h['seconds']:.0f} MiB/s, "
        f"decrypt {mib / dec_h['seconds']:.0f} MiB/s"
    )
    print(
        f"peak RSS growth streaming: encrypt {enc['rss_growth_mib']:.1f} MiB, decrypt {dec['rss_growth_mib']:.1f} MiB"
        f" (target < 64 MiB)"
    )


if __name__ == "__main__":
    main()
