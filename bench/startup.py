"""Start-up of the native backend: time from ``NativeBackend.load()`` to the first token, and to compiled speed.

    .venv/bin/python bench/startup.py --cache /tmp/enigma-cache-cold   # an empty directory: the first start
    .venv/bin/python bench/startup.py --cache /tmp/enigma-cache-cold   # again: a restart with the stored step
    .venv/bin/python bench/startup.py --compile off                    # eager only, no build running

Prints one table: load, first token, compiled step in place (all from the start of ``load()``), and decode
ms/token eager (while the step is pending or building, which shows what a build in the background costs) and
compiled, each the median of a few greedy generations of the default model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot that learns to paint."


async def _decode_ms(backend: Any, tokens: int) -> tuple[float, float]:
    """One greedy chat reply: (ms to its first token, ms per token after that)."""
    prompt = backend.render_chat([{"role": "user", "content": PROMPT}])
    gen = backend.generate(prompt, {"temperature": 0.0, "max_tokens": tokens})
    await gen.drain()
    usage = gen.usage
    assert usage is not None
    ttft = float(usage.ttft_ms or 0.0)
    per_token = (usage.total_ms - ttft) / max(usage.completion_tokens - 1, 1)
    return ttft, per_token


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="cache directory (XDG_CACHE_HOME); default: the user's")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.cache is not None:
        os.environ["XDG_CACHE_HOME"] = str(args.cache)
        os.environ.pop("CACHE_DIRECTORY", None)
    from daemon.llm.native import NativeBackend

    backend = NativeBackend("default", {"compile": args.compile}, Path("/tmp/enigma-bench-data"))
    t0 = time.perf_counter()
    await backend.load()
    t_loaded = time.perf_counter() - t0
    await _decode_ms(backend, 4)
    t_first = time.perf_counter() - t0
    state_at_first = backend.info()["compiled"]
    eager = [(await _decode_ms(backend, args.tokens))[1] for _ in range(args.runs)]
    state_eager = backend.info()["compiled"]
    rows = [
        ("load() returned", f"{t_loaded:.1f} s"),
        ("first token", f"{t_first:.1f} s (compiled: {state_at_first})"),
        (f"eager decode (compiled: {state_eager})", f"{statistics.median(eager):.1f} ms/token"),
    ]
    if args.compile != "off":
        job = backend._compile
        if job is None or not await asyncio.to_thread(job.wait, 3600):
            rows.append(("compiled step", f"none: {backend.info().get('compile_reason')}"))
            await backend.unload()
            _print(rows)
            return
        await asyncio.to_thread(backend.step_ready.wait, 60)
        rows.append(("compiled step in place", f"{time.perf_counter() - t0:.1f} s"))
        compiled = [(await _decode_ms(backend, args.tokens))[1] for _ in range(args.runs)]
        rows.append(("compiled decode", f"{statistics.median(compiled):.1f} ms/token"))
        info = backend.info()
        rows.append(("how", ", ".join(f"{k}={v}" for k, v in info.items() if k.startswith("compile"))))
    await backend.unload()
    _print(rows)


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    asyncio.run(main())
