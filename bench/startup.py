"""Start-up of ``enigmad`` with the default model, cold and warm, against llama.cpp's in the same run.

Each start spawns a real daemon (``python -m daemon``, the default model, compile ``auto``) and times, from the
moment the process is spawned:

- its first ``sys.ping`` answer (target < 1 s: the bus binds before any model work);
- the first token of an ``llm.generate`` sent right after that ping (the request waits for the model);
- the compiled decode step in place (``module.list`` polled for the llm module's ``compiled``), then the
  decode rate at compiled speed.

Cold: an empty cache directory (``XDG_CACHE_HOME``): the kernels and the compiled step are built. Warm: a second
start on the same cache, as a restart after an upgrade-free reboot (targets: first token < 5 s, compiled speed
< 5 s). llama.cpp: a fresh Python process that loads the same GGUF with the same threads and decodes the same
prompt, timed from its spawn to its first token; the warm first token is printed as a ratio to it.

    .venv/bin/python bench/startup.py                         # cold, warm, llama.cpp (about 6 minutes)
    .venv/bin/python bench/startup.py --cache DIR --skip-cold # warm only, on a cache that holds the step
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve import PROMPT, ROOT, bus_stream, start_daemon

LLAMA_CPP = """
import json, sys, time
t0 = float(sys.argv[1])
from llama_cpp import Llama
from engine.loader import default_model_path
t_import = time.time() - t0
llm = Llama(model_path=str(default_model_path()), n_ctx=512, n_threads=int(sys.argv[2]), verbose=False)
t_load = time.time() - t0
ids = llm.tokenize(sys.argv[3].encode(), add_bos=False)
for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
    break
print(json.dumps({"import": t_import, "loaded": t_load, "first_token": time.time() - t0}))
"""


async def _watch_compiled(c: Any, t0: float, within: float) -> tuple[float | None, dict[str, Any]]:
    """When the llm module first reports its compiled step in place (seconds since ``t0``), and its info then.
    A benchmark polls (every 0.1 s, beside the generations): the daemon has no event for this step."""
    deadline = time.monotonic() + within
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        mods = (await c.call("module.list", {}))["modules"]
        info = next((m.get("info") or {} for m in mods if m["name"] == "llm"), {})
        if info.get("compiled") is True:
            return time.perf_counter() - t0, info
        if info.get("compiled") is False:
            break
        await asyncio.sleep(0.1)
    return None, info


async def probe(rpc: str, events: str, t0: float, tokens: int, within: float) -> dict[str, Any]:
    """Ping, first token, compiled step, decode rates: seconds since ``t0`` (the spawn)."""
    from clients.sdk import Client

    out: dict[str, Any] = {}
    async with Client(rpc, events, timeout=within) as c:
        await c.call("sys.ping", {}, timeout=10)
        out["ping"] = time.perf_counter() - t0
        watcher = asyncio.create_task(_watch_compiled(c, t0, within))
        body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 4}
        async with c.stream("llm.generate", body) as s:
            async for _ in s:
                out.setdefault("first_token", time.perf_counter() - t0)
        if not watcher.done():  # still eager: how fast it serves meanwhile
            out["eager_tps"] = (await bus_stream(c, tokens))[1]
        out["compiled_at"], info = await watcher
        out["how"] = {k: v for k, v in info.items() if k.startswith("compile")}
        if out["compiled_at"] is not None:
            out["compiled_tps"] = max([(await bus_stream(c, tokens))[1] for _ in range(2)])
    return out


def one_start(cache: Path, threads: int, tokens: int, within: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"XDG_CACHE_HOME": str(cache), "CACHE_DIRECTORY": ""}
        t0 = time.perf_counter()
        proc, rpc, events = start_daemon(Path(tmp), 8, 4096, threads, env)
        try:
            return asyncio.run(probe(rpc, events, t0, tokens, within))
        finally:
            proc.terminate()
            proc.wait(60)


def llama_cpp(threads: int) -> dict[str, float]:
    """From the spawn of a Python process to llama.cpp's first token on the same GGUF."""
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP, str(t0), str(threads), PROMPT],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, help="cache directory for both starts (default: a new empty one)")
    ap.add_argument("--skip-cold", action="store_true", help="only the warm start (on --cache)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per decode-rate run")
    ap.add_argument("--within", type=float, default=1200.0, help="seconds to wait for the compiled step")
    args = ap.parse_args()
    from engine import kernels

    print(f"CPU: {kernels.describe()}")
    print(f"threads: {args.threads}; default model; context 4096, max_batch 8 (the daemon's defaults)")
    with tempfile.TemporaryDirectory() as fresh:
        cache = args.cache or Path(fresh)
        runs: dict[str, dict[str, Any]] = {}
        if not args.skip_cold:
            runs["cold"] = one_start(cache, args.threads, args.tokens, args.within)
            print(f"cold: {runs['cold']}", flush=True)
        runs["warm"] = one_start(cache, args.threads, args.tokens, args.within)
        print(f"warm: {runs['warm']}", flush=True)
    ref = llama_cpp(args.threads)
    print()
    print(f"{'from spawn':<30}" + "".join(f"{k:>14}" for k in runs) + f"{'llama.cpp':>14}")
    rows = [
        ("first sys.ping answered", "ping", None),
        ("first token", "first_token", ref["first_token"]),
        ("compiled step in place", "compiled_at", None),
    ]
    for label, key, theirs in rows:
        print(f"{label:<30}" + "".join(f"{_s(r.get(key)):>14}" for r in runs.values()) + f"{_s(theirs):>14}")
    print(f"{'  (llama.cpp: model loaded)':<30}" + " " * 14 * len(runs) + f"{_s(ref['loaded']):>14}")
    for label, key in (("decode tok/s, eager", "eager_tps"), ("decode tok/s, compiled", "compiled_tps")):
        cells = "".join(f"{r[key]:>14.1f}" if key in r else f"{'-':>14}" for r in runs.values())
        print(f"{label:<30}" + cells)
    for name, r in runs.items():
        print(f"{name}: {r['how']}")
    warm = runs["warm"]
    print()
    print(f"warm: first sys.ping {_s(warm['ping'])} (target < 1 s)")
    print(
        f"warm: first token {_s(warm['first_token'])} (target < 5 s) = "
        f"{warm['first_token'] / ref['first_token']:.2f}x llama.cpp's {_s(ref['first_token'])} from spawn"
    )
    print(f"warm: compiled speed from {_s(warm.get('compiled_at'))} (target < 5 s)")


if __name__ == "__main__":
    main()
