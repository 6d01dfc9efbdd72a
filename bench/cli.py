"""How long ``enigma`` takes to start, as a ratio to starting the bare interpreter on the same machine.

Runs each command ``--runs`` times (after ``--warmup`` runs that fill the OS cache), hyperfine-style, and prints
the median and spread of the wall time, and the median's ratio to ``python -c pass``. The "eager imports" row
shows what ``--help`` would cost if the CLI imported the SDK's dependencies at the top, which is what the lazy
imports save.

    .venv/bin/python bench/cli.py [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _time(cmd: list[str], runs: int, warmup: int) -> list[float]:
    env = dict(os.environ, NO_COLOR="1")
    for _ in range(warmup):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    enigma = str(BIN / "enigma")
    cases = [
        ("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
        ("enigma --help", [enigma, "--help"]),
        ("enigma keys --help", [enigma, "keys", "--help"]),
        ("eager imports (zmq msgpack asyncio)", [sys.executable, "-c", "import zmq, msgpack, asyncio"]),
    ]
    results = [(name, _time(cmd, args.runs, args.warmup)) for name, cmd in cases]
    base = statistics.median(results[0][1])
    print(f"enigma start time: {args.runs} runs each, median wall time; ratio = median / baseline median")
    print(f"{'command':<38} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'ratio':>7}")
    for name, times in results:
        med = statistics.median(times)
        print(f"{name:<38} {med * 1000:>10.1f} {min(times) * 1000:>8.1f} {max(times) * 1000:>8.1f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
