"""The host's process table from /proc, for tests that look for leftover, zombie or helper processes."""

from __future__ import annotations

import os


def process_table() -> dict[int, tuple[str, int]]:
    """{pid: (state letter, parent pid)} of every process that could be read (one may end while we look)."""
    out: dict[int, tuple[str, int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(pid)] = (fields[0], int(fields[1]))
    return out
