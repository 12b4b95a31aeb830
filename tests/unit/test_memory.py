"""A daemon's freed 16 MiB WAL buffers leave its resident memory (glibc keeps them otherwise)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, threading
from cqox_platform.memory import return_large_buffers

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "on":
    assert return_large_buffers()
base = rss_mib()

def segments():
    for _ in range(4):
        segment = b"w" * (16 << 20)  # a WAL segment's plaintext, touched
        del segment

threads = [threading.Thread(target=segments) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mib() - base)
"""


def _kept_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


def test_freed_segment_buffers_are_returned_to_the_system():
    assert _kept_mib("on") < 8, "16 MiB buffers freed by worker threads stayed resident"
