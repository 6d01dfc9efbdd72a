"""Serving cost of the bus, and how throughput scales with concurrent clients, as ratios measured in one run.

1. Baseline: the engine in this process — ``load_model`` + ``Scheduler`` — streaming one greedy completion.
2. Through the bus: the same prompt and settings as ``llm.generate`` from the SDK to a real ``enigmad``
   subprocess (the native LLM module, the same scheduler) and back. Compared on time to first token (TTFT,
   from the submit/send to the first text delta in the caller's hands) and decode tokens/s (tokens after the
   first over the time from first to last delta). Targets: the bus costs <= 5 % of decode throughput and
   <= 10 ms of TTFT. Two processes on a busy machine get unequal CPU shares, so the same figures are also
   shown against the daemon's own timing of those very requests (its ``usage``: from handing the prompt to
   the scheduler to each delta reaching its event loop); that difference is the bus and SDK alone.
3. The same greedy completion from llama.cpp (llama-cpp-python, in a process of its own) on the same GGUF with
   the same thread count: the daemon's decode rate against it (target >= 1.0x) and its TTFT beside ours.
4. Aggregate tokens/s with 1, 4, 8 and 16 SDK clients streaming at once (each its own connection), as a ratio
   to one client, beside the same counts of concurrent requests on the in-process engine, each the median of
   ``--conc-runs`` rounds over all the levels. Target: 8 clients >= 4x one.

The prompt counts ("1, 2, 3, 4, 5,"), so greedy decoding runs to ``max_tokens`` every time and each run does
the same work. Runs alternate between the paths (the other one idle), so load from elsewhere on the machine
hits both alike; the concurrency table shows the in-process engine too, to tell the engine's scaling from
the daemon's.

    .venv/bin/python bench/serve.py [--tokens 128] [--runs 5] [--conc-tokens 64] [--levels 1,4,8,16] [--conc-runs 3]
                                    [--threads 2] [--skip-llamacpp]

Every figure is printed with the CPU's SIMD features and the kernel set in use (``engine.kernels.describe``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "1, 2, 3, 4, 5,"
Run = tuple[float, float, int, float, float]  # ttft_s, decode tok/s, completion tokens, t_start, t_end
READY = re.compile(r"^enigmad ready rpc=(\S+) events=(\S+)$")


class InProcess:
    """The baseline: the engine and its scheduler in this process, no daemon, no bus."""

    def __init__(self, max_batch: int, context: int) -> None:
        import threading

        self._failure: list[BaseException] = []
        ready = threading.Event()
        # As the daemon's native backend does: one engine thread loads, prepares, compiles and serves.
        self._thread = threading.Thread(target=self._engine, args=(max_batch, context, ready), daemon=True)
        self._thread.start()
        ready.wait()
        if self._failure:
            raise self._failure[0]

    def _engine(self, max_batch: int, context: int, ready: Any) -> None:
        import torch

        from engine.compile import compile_decode
        from engine.loader import default_model_path, load_model
        from engine.quant import prepare_for_inference
        from engine.scheduler import Scheduler

        try:
            loaded = load_model(default_model_path(), max_seq_len=context)
            # The same kernels and compiled step the daemon's native backend picks by default.
            with torch.no_grad():
                prepare_for_inference(loaded.model, "auto", loaded.source)
            self.tok = loaded.tokenizer
            self.ids = self.tok.encode(PROMPT, add_bos=self.tok.add_bos)
            self.sched = Scheduler(loaded.model, self.tok, max_batch, max_seq=context)
            self.sched.set_decode_step(compile_decode(loaded.model, "auto", batch_sizes=(1, 2))[0])
        except BaseException as exc:  # re-raised by __init__
            self._failure.append(exc)
            ready.set()
            return
        self.sched.run(ready=ready.set)

    def stream(self, tokens: int) -> Run:
        """Same tuple as ``bus_stream``, consuming the handle with its blocking iterator."""
        from engine.sampling import SamplingParams

        t0 = time.perf_counter()
        handle = self.sched.submit(self.ids, SamplingParams(temperature=0.0, max_tokens=tokens))
        first = last = None
        n = 0
        for ev in handle:
            if isinstance(ev, str):
                now = time.perf_counter()
                first = first or now
                last = now
            else:
                n = ev.completion_tokens
        assert first is not None
        assert last is not None
        return first - t0, (n - 1) / (last - first), n, t0, last

    async def concurrent(self, n: int, tokens: int) -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=n) as pool:  # one consumer thread per stream, like n clients
            results = await asyncio.gather(*(loop.run_in_executor(pool, self.stream, tokens) for _ in range(n)))
        return aggregate(list(results))

    def close(self) -> None:
        self.sched.stop()
        self._thread.join(10)


LLAMA_CPP_CHILD = """
import json, sys, time
from llama_cpp import Llama
from engine.loader import default_model_path
llm = Llama(model_path=str(default_model_path()), n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[1]), verbose=False)
ids = llm.tokenize(sys.argv[3].encode(), add_bos=False)
print("ready", flush=True)
for line in sys.stdin:
    tokens = int(line)
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        last = time.perf_counter()
        first = first or last
        n += 1
        if n == tokens:
            break
    print(json.dumps([first - t0, (n - 1) / (last - first), n, t0, last]), flush=True)
"""


class LlamaCpp:
    """The reference engine: llama.cpp on the same GGUF, greedy, the same thread count, timed as the others.

    In a process of its own, idle on a pipe between runs: in this one, ggml's polling threads and torch's
    OpenMP team took the two cores from each other (llama.cpp measured 33 tok/s there).
    """

    def __init__(self, threads: int, context: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LLAMA_CPP_CHILD, str(threads), str(context), PROMPT],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("llama.cpp did not load the model")

    def stream(self, tokens: int) -> Run:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{tokens}\n")
        self.proc.stdin.flush()
        ttft, rate, n, t0, last = json.loads(self.proc.stdout.readline())
        return ttft, rate, int(n), t0, last

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def aggregate(results: list[Run]) -> float:
    total = sum(r[2] for r in results)
    return total / (max(r[4] for r in results) - min(r[3] for r in results))


def start_daemon(
    tmp: Path, max_batch: int, context: int, threads: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, str]:
    """``enigmad`` with the default model in ``tmp``; returns once it printed its ready line (its bus is bound)."""
    cfg = tmp / "enigmad.toml"
    cfg.write_text(
        f'[modules]\nautoload = ["llm"]\n\n[modules.llm]\nmax_batch = {max_batch}\ncontext_length = {context}\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon",
            "--data-dir",
            str(tmp / "data"),
            "--config",
            str(cfg),
            "--rpc",
            "tcp://127.0.0.1:0",
            "--events",
            "tcp://127.0.0.1:0",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=open(tmp / "enigmad.log", "w"),  # noqa: SIM115 (lives as long as the process)
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = READY.match(line.strip())
        if m:
            return proc, m.group(1), m.group(2)
    raise RuntimeError(f"enigmad did not start:\n{(tmp / 'enigmad.log').read_text()}")


async def wait_compiled(rpc: str, events: str, within: float = 900.0) -> str:
    """The daemon answers before its model loads and serves eagerly until its compiled decode step is in place:
    wait for that (polling ``module.list``; this is a benchmark, not a test), so both paths run compiled."""
    from clients.sdk import Client

    deadline = time.monotonic() + within
    async with Client(rpc, events, timeout=60) as c:
        while time.monotonic() < deadline:
            mods = (await c.call("module.list", {}))["modules"]
            info = next((m.get("info") or {} for m in mods if m["name"] == "llm"), {})
            state = info.get("compiled")
            if state is True or state is False or (isinstance(state, str) and state.startswith("failed")):
                return str(state)
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the daemon's decode step was not compiled within {within:.0f} s")


async def bus_stream(client: Any, tokens: int, inside: list[tuple[float, float]] | None = None) -> Run:
    """One ``llm.generate`` through the bus, timed in this process. ``inside`` collects the daemon's own view
    (TTFT and decode rate as its ``usage`` reports them, measured on the daemon's loop)."""
    t0 = time.perf_counter()
    first = last = None
    # Exactly the in-process SamplingParams: the module's own defaults (top_p, repetition penalty) are overridden.
    body = {"prompt": PROMPT, "temperature": 0, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": tokens}
    async with client.stream("llm.generate", body) as s:
        async for _ in s:
            now = time.perf_counter()
            first = first or now
            last = now
    assert first is not None
    assert last is not None
    assert s.result is not None
    usage = s.result["usage"]
    n = int(usage["completion_tokens"])
    if inside is not None:
        inside.append((usage["ttft_ms"] / 1000, usage["decode_tokens_per_s"]))
    return first - t0, (n - 1) / (last - first), n, t0, last


async def measure(
    engine: InProcess,
    llama: LlamaCpp | None,
    rpc: str,
    events: str,
    tokens: int,
    runs: int,
    conc_tokens: int,
    levels: list[int],
    conc_runs: int,
) -> tuple[
    list[tuple[float, float]],
    list[tuple[float, float]],
    list[tuple[float, float]],
    list[tuple[float, float]],
    dict[int, Any],
]:
    """Runs alternate between the paths, so load from elsewhere on the machine hits them alike."""
    from clients.sdk import Client

    base: list[tuple[float, float]] = []
    bus: list[tuple[float, float]] = []
    inside: list[tuple[float, float]] = []
    ref: list[tuple[float, float]] = []
    async with Client(rpc, events, timeout=300) as c:
        await c.call("sys.ping", {})
        for i in range(runs + 1):  # the first round warms them up (allocations, kernels)
            e = await asyncio.to_thread(engine.stream, tokens)
            b = await bus_stream(c, tokens, inside if i else None)
            r = await asyncio.to_thread(llama.stream, tokens) if llama is not None else None
            if i:
                base.append(e[:2])
                bus.append(b[:2])
                if r is not None:
                    ref.append(r[:2])
    # Rounds over all levels, each level's figure their median: a burst of load elsewhere on the machine then
    # spoils one sample of several levels instead of the whole figure of one (the 1-client baseline included).
    samples: dict[int, tuple[list[float], list[float]]] = {n: ([], []) for n in levels}
    for _ in range(conc_runs):
        for n in levels:
            samples[n][0].append(await engine.concurrent(n, conc_tokens))
            samples[n][1].append(await bus_concurrent(rpc, events, n, conc_tokens))
    agg = {n: (statistics.median(e), statistics.median(b)) for n, (e, b) in samples.items()}
    return base, bus, inside, ref, agg


async def bus_concurrent(rpc: str, events: str, n: int, tokens: int) -> float:
    """Aggregate completion tokens/s of ``n`` clients streaming at once, each on its own connection."""
    from clients.sdk import Client

    clients = [Client(rpc, events, timeout=300) for _ in range(n)]
    for c in clients:
        await c.connect()
        await c.call("sys.ping", {})
    try:
        results = await asyncio.gather(*(bus_stream(c, tokens) for c in clients))
    finally:
        for c in clients:
            await c.close()
    return aggregate(list(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per completion for the TTFT/decode runs")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per path (after one warm-up)")
    ap.add_argument("--conc-tokens", type=int, default=64, help="tokens per client in the concurrency runs")
    ap.add_argument("--levels", default="1,4,8,16", help="concurrent client counts")
    ap.add_argument("--conc-runs", type=int, default=3, help="rounds over the levels (each level: their median)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine (torch, enigmad, llama.cpp)")
    ap.add_argument("--skip-llamacpp", action="store_true", help="no llama.cpp baseline")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    max_batch, context = max(levels), 512

    import torch

    from engine import kernels

    torch.set_num_threads(args.threads)
    print(f"CPU: {kernels.describe()}")
    print(f"threads: {args.threads}; prompt {PROMPT!r}; greedy; {args.tokens} tokens x {args.runs}")
    engine = InProcess(max_batch, context)
    llama = None if args.skip_llamacpp else LlamaCpp(args.threads, context)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            proc, rpc, events = start_daemon(Path(tmpdir), max_batch, context, args.threads)
            try:
                print(f"daemon's compiled step: {asyncio.run(wait_compiled(rpc, events))}")
                base, bus, inside, ref, agg = asyncio.run(
                    measure(
                        engine, llama, rpc, events, args.tokens, args.runs, args.conc_tokens, levels, args.conc_runs
                    )
                )
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        engine.close()
        if llama is not None:
            llama.close()

    b_ttft = statistics.median(t for t, _ in base) * 1000
    b_tps = statistics.median(r for _, r in base)
    s_ttft = statistics.median(t for t, _ in bus) * 1000
    s_tps = statistics.median(r for _, r in bus)
    i_ttft = statistics.median(t for t, _ in inside) * 1000
    i_tps = statistics.median(r for _, r in inside)
    print()
    print(f"{'path':<36}{'TTFT ms':>10}{'decode tok/s':>14}")
    print(f"{'engine in-process':<36}{b_ttft:>10.1f}{b_tps:>14.1f}")
    print(f"{'SDK -> enigmad -> SDK':<36}{s_ttft:>10.1f}{s_tps:>14.1f}")
    print(f"{'  of which inside enigmad (usage)':<36}{i_ttft:>10.1f}{i_tps:>14.1f}")
    if ref:
        r_ttft = statistics.median(t for t, _ in ref) * 1000
        r_tps = statistics.median(r for _, r in ref)
        print(f"{'llama.cpp, own process (same GGUF)':<36}{r_ttft:>10.1f}{r_tps:>14.1f}")
    print(
        f"bus vs in-process engine: TTFT {s_ttft - b_ttft:+.1f} ms, decode ratio {s_tps / b_tps:.3f} "
        f"(cost {(1 - s_tps / b_tps) * 100:+.1f} %)"
    )
    print(
        f"bus vs the same daemon's own timing: TTFT {s_ttft - i_ttft:+.1f} ms (target <= 10 ms), decode ratio "
        f"{s_tps / i_tps:.3f} (cost {(1 - s_tps / i_tps) * 100:+.1f} %, target <= 5 %)"
    )
    if ref:
        print(
            f"through the bus vs llama.cpp: decode {s_tps / r_tps:.2f}x (target >= 1.0x), TTFT {s_ttft - r_ttft:+.1f} ms"
        )
    print()
    print(f"{'clients':>8}{'in-process tok/s':>18}{'x one':>8}{'bus tok/s':>12}{'x one':>8}{'bus/in-proc':>13}")
    e1, b1 = agg[levels[0]]
    for n in levels:
        e, b = agg[n]
        print(f"{n:>8}{e:>18.1f}{e / e1:>8.2f}{b:>12.1f}{b / b1:>8.2f}{b / e:>13.3f}")
    if levels[0] == 1 and 8 in agg:
        print(f"through the bus, 8 clients / 1 client = {agg[8][1] / b1:.2f}x (target >= 4x)")


if __name__ == "__main__":
    main()
