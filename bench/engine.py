"""Engine benchmark: the native engine (float32 and each quantized mode) against Hugging Face transformers and
llama.cpp on the same GGUF and thread count, plus the batching scheduler at 1, 4 and 8 concurrent streams.

    .venv/bin/python bench/engine.py [--threads 2] [--model FILE.gguf] [--prompt-tokens 128] [--decode-tokens 64]

Every figure is also given as a ratio to a baseline measured in the same run. The machine may be shared, so
prefill is the best of ``--repeats`` runs and decode speed is 1 / the median time of a decode step (timed step
by step, the same way for every engine), so a neighbour's burst spoils only the steps it hits.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar would garble the table

import torch

TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring panels; "
    "then came stored programs, assemblers, compilers and operating systems, each hiding the layer below. "
    "Today a person can ask a question in plain language and a model running on a small computer answers it. "
)
EVAL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
]


@dataclass
class Row:
    name: str
    prefill: float = 0.0  # tokens/s
    decode: float = 0.0  # tokens/s
    ttft_ms: float = 0.0
    rss_mb: float = 0.0
    cpu_ms: float = 0.0  # process CPU time per decode step (all threads): robust to a busy machine
    notes: list[str] = field(default_factory=list)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def weights_mb(model: torch.nn.Module) -> float:
    """Bytes of the model's parameters and buffers (KV cache excluded), each storage counted once."""
    seen: dict[int, int] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if ".cache." not in name:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class NoStop:
    """The tokenizer with no stop tokens, so every run decodes exactly the tokens asked for."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.stop_ids: set[int] = set()
        self.eos_id = tok.eos_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return self._tok.encode(text, add_bos)

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._tok.decode(ids, skip_special)


# ---------------------------------------------------------------------------------------------------------------
def bench_native(model, tok, prompt: list[int], n_decode: int, repeats: int, compiled: bool = False) -> Row:
    from engine.compile import compile_decode

    model.setup_cache(1, len(prompt) + n_decode + 8)
    notes = []
    step = None
    if compiled:
        step, report = compile_decode(model, "on", batch_sizes=(1,))
        notes.append(f"compile {report['compile_s']}s")
    ids = torch.tensor([prompt])
    pos = torch.arange(len(prompt)).unsqueeze(0)

    def prefill() -> None:
        with torch.inference_mode():
            model(ids, pos, slot=0, last_only=True)

    prefill()
    t_prefill = best(prefill, repeats)
    ttft = min(_native_ttft(model, tok, prompt) for _ in range(repeats))
    steps: list[tuple[float, float]] = []
    for _ in range(repeats):
        steps += _native_decode_steps(model, tok, prompt, n_decode, step)
    return Row(
        "",
        prefill=len(prompt) / t_prefill,
        decode=1.0 / statistics.median(w for w, _ in steps),
        cpu_ms=statistics.median(c for _, c in steps) * 1000,
        ttft_ms=ttft * 1000,
        rss_mb=weights_mb(model),
        notes=notes,
    )


def _native_ttft(model, tok, prompt: list[int]) -> float:
    from engine.generate import generate
    from engine.sampling import SamplingParams

    events = list(generate(model, NoStop(tok), prompt, SamplingParams(temperature=0.0, max_tokens=1)))
    return events[-1].ttft_ms / 1000  # type: ignore[union-attr]


def _native_decode_steps(model, tok, prompt: list[int], n_decode: int, step=None) -> list[tuple[float, float]]:
    """Seconds per decode step of the real per-token path (forward, sample, detokenize, stop checks) —
    ``engine.generate``'s loop, timed step by step so a busy neighbour's burst only spoils its own steps."""
    from engine.generate import Decoding, decode_step, prefill_chunk
    from engine.sampling import SamplingParams

    state = Decoding(NoStop(tok), prompt, SamplingParams(temperature=0.0, max_tokens=n_decode), model.config.vocab_size)
    out = []
    with torch.inference_mode():
        logits = prefill_chunk(model, prompt, 0, slot=0)
        state.accept(state.sample(logits))
        while not state.done:
            t, c = time.perf_counter(), time.process_time()
            tok_ = torch.tensor([[state.last_token]])
            pos = torch.tensor([[state.position]])
            logits = decode_step(model, step, tok_, pos, state.position + 1)[0, -1]
            state.accept(state.sample(logits))
            out.append((time.perf_counter() - t, time.process_time() - c))
    return out


def native_last_logits(model, tok, prompts: list[str]) -> list[torch.Tensor]:
    model.drop_cache()
    with torch.inference_mode():
        return [model(torch.tensor([tok.encode(p)]))[0, -1].float() for p in prompts]


def logits_vs(ref: list[torch.Tensor], other: list[torch.Tensor]) -> str:
    cos = min(float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in zip(ref, other, strict=True))
    mad = max(float((a - b).abs().max()) for a, b in zip(ref, other, strict=True))
    agree = sum(int(a.argmax() == b.argmax()) for a, b in zip(ref, other, strict=True))
    return f"vs fp32: max|Δ|={mad:.3f} cos={cos:.5f} argmax {agree}/{len(ref)}"


def bench_transformers(path: Path, prompt: list[int], n_decode: int, repeats: int) -> Row | str:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return "transformers: not installed"
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    rss0 = rss_mb()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / path.name).symlink_to(path)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=path.name, dtype=torch.float32).eval()
        load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt])

    def prefill():
        with torch.inference_mode():
            return model(ids, use_cache=True)

    prefill()
    t_prefill = best(prefill, repeats)
    steps: list[tuple[float, float]] = []
    for _ in range(repeats):
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            pkv = out.past_key_values
            for _ in range(n_decode - 1):
                t, c = time.perf_counter(), time.process_time()
                out = model(nxt, past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                steps.append((time.perf_counter() - t, time.process_time() - c))
    decode = 1.0 / statistics.median(w for w, _ in steps)
    row = Row("transformers fp32", prefill=len(prompt) / t_prefill, decode=decode, ttft_ms=t_prefill * 1000)
    row.cpu_ms = statistics.median(c for _, c in steps) * 1000
    row.rss_mb = rss_mb() - rss0
    row.notes.append(f"load {load_s:.1f}s")
    return row


def bench_llamacpp(path: Path, prompt: list[int], n_decode: int, threads: int, repeats: int, tok, ref_logits):
    try:
        import llama_cpp
    except ImportError:
        return "llama.cpp: not installed", None
    import numpy as np

    rss0 = rss_mb()
    llm = llama_cpp.Llama(
        model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=1024, logits_all=True, verbose=False
    )

    def prefill():
        llm.reset()
        llm.eval(prompt)

    prefill()
    t_prefill = best(prefill, repeats)
    steps: list[tuple[float, float]] = []
    for _ in range(repeats):
        prefill()
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(n_decode - 1):
            t, c = time.perf_counter(), time.process_time()
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            steps.append((time.perf_counter() - t, time.process_time() - c))
    best_decode = 1.0 / statistics.median(w for w, _ in steps)
    other = []
    for p in EVAL_PROMPTS:
        ids = tok.encode(p)
        llm.reset()
        llm.eval(ids)
        other.append(torch.from_numpy(np.array(llm.scores[len(ids) - 1], dtype=np.float32)))
    row = Row(f"llama.cpp {llama_cpp.__version__}", prefill=len(prompt) / t_prefill, decode=best_decode)
    row.ttft_ms = t_prefill * 1000
    row.cpu_ms = statistics.median(c for _, c in steps) * 1000
    row.rss_mb = rss_mb() - rss0
    row.notes.append(logits_vs(ref_logits, other))
    llm.close()
    return row, other


def bench_scheduler(
    model, tok, n_decode: int, levels: list[int], repeats: int, compiled: bool = False
) -> dict[int, tuple[float, float]]:
    """Aggregate tokens/s of ``levels`` concurrent requests, two ways: end to end (all tokens over the wall time
    from submitting to the last finish: the prompts' prefills included, one after another) and decode (the sum of
    each request's own decode rate after its first token). The scheduler serves on this (main) thread, which
    loaded the model, as the daemon's engine thread does (``Scheduler.run``); a client thread submits."""
    import threading

    from engine.compile import compile_decode
    from engine.sampling import SamplingParams
    from engine.scheduler import Scheduler

    out: dict[int, tuple[float, float]] = {}
    texts = [TEXT[i * 7 : i * 7 + 120] for i in range(max(levels))]
    prompts = [tok.encode(t) for t in texts]
    model.drop_cache()
    sched = Scheduler(model, NoStop(tok), max_batch=max(levels), max_seq=512)
    if compiled:
        sched.set_decode_step(compile_decode(model, "on", batch_sizes=(1, 2))[0])
    failure: list[BaseException] = []

    def client() -> None:
        try:
            sched.submit(prompts[0], SamplingParams(temperature=0.0, max_tokens=4)).collect()  # warm up
            for n in levels:
                for _ in range(repeats):
                    t = time.perf_counter()
                    params = SamplingParams(temperature=0.0, max_tokens=n_decode)
                    handles = [sched.submit(prompts[i], params) for i in range(n)]
                    usages = [h.collect()[1] for h in handles]
                    total = sum(u.completion_tokens for u in usages) / (time.perf_counter() - t)
                    decode = sum(u.decode_tokens_per_s or 0.0 for u in usages)
                    best = out.get(n, (0.0, 0.0))
                    out[n] = (max(best[0], total), max(best[1], decode))
        except BaseException as exc:  # re-raised below, on the main thread
            failure.append(exc)
        finally:
            sched.stop(timeout=0)

    sched.run(ready=threading.Thread(target=client, daemon=True).start)
    if failure:
        raise failure[0]
    return out


def step_ms_by_rows(model, levels: list[int], amx: bool, steps: int = 30) -> dict[int, float]:
    """Median time of one decode step (``model(tokens, pos)``, what the scheduler calls) at each row count, on
    the model's cache and compiled step as ``bench_scheduler`` left them; ``amx`` switches AMX tiles."""
    from engine import kernels

    kernels.set_amx(amx)
    out = {}
    with torch.inference_mode():
        for rows in levels:
            tokens, pos = torch.zeros(rows, 1, dtype=torch.long), torch.full((rows, 1), 20, dtype=torch.long)
            for _ in range(3):
                model(tokens, pos, slot=0, last_only=True, length=21)
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                model(tokens, pos, slot=0, last_only=True, length=21)
                times.append(time.perf_counter() - t)
            out[rows] = statistics.median(times) * 1000
    kernels.set_amx(True)
    return out


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:5.2f}x" if b else "   - "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: the packaged SmolLM2-135M Q4_1)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--modes",
        default="fp32,int8,int4,gguf,compiled,compiled-vector,compiled-torch",
        help="native modes (compiled: gguf + compiled decode; a -torch suffix: PyTorch's kernels, not enigma's; "
        "-vector: enigma's without AMX tiles (skipped where there are none); -avx512, -avx512-vnni, -avx-vnni, "
        "-avx2, -neon, -neon-dot: that kernel set, where the CPU runs it)",
    )
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--concurrency", default="1,4,8")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from engine import kernels
    from engine.loader import default_model_path, load_model
    from engine.quant import prepare_for_inference

    path = (args.model or default_model_path()).resolve()
    t0 = time.perf_counter()
    lm = load_model(path, max_seq_len=1024)
    load_s = time.perf_counter() - t0
    tok = lm.tokenizer
    prompt = (tok.encode(TEXT) * (args.prompt_tokens // 10 + 1))[: args.prompt_tokens]
    print(
        f"model {path.name} · {args.threads} threads · prompt {len(prompt)} tokens · decode {args.decode_tokens} tokens"
    )
    print(f"native load {load_s:.1f}s · torch {torch.__version__}\n", flush=True)

    base = lm.model
    ref_logits = native_last_logits(base, tok, EVAL_PROMPTS)
    rows: list[Row] = []
    models = {}
    t = time.perf_counter()
    print(f"enigma kernels: {'loaded' if kernels.load() else kernels.reason()} ({time.perf_counter() - t:.1f}s)")
    print(f"CPU: {kernels.describe()}\n")
    for mode in args.modes.split(","):
        quant, _, suffix = mode.partition("-")
        if quant not in ("fp32", "int8", "int4", "gguf", "compiled") or suffix not in (
            "",
            "torch",
            "vector",
            *kernels.ISAS,
        ):
            raise SystemExit(f"unknown mode {mode}")
        if (suffix == "vector" and not kernels.amx()) or (suffix in kernels.ISAS and kernels.unsupported(suffix)):
            print(f"  skip {mode}: {'no AMX here' if suffix == 'vector' else kernels.unsupported(suffix)}")
            continue
        model = base if mode == "fp32" else copy.deepcopy(base)
        model.drop_cache()
        kernel = "torch" if suffix == "torch" else suffix if suffix in kernels.ISAS else "auto"
        kernels.set_amx(suffix != "vector")
        t = time.perf_counter()
        if quant in ("int8", "int4"):
            report = prepare_for_inference(model, quant, kernel=kernel)
        elif quant in ("gguf", "compiled"):
            report = prepare_for_inference(model, "auto", str(path), kernel=kernel)
        q_s = time.perf_counter() - t
        gc.collect()
        row = bench_native(model, tok, prompt, args.decode_tokens, args.repeats, compiled=quant == "compiled")
        row.name = {"gguf": "native gguf (Q4_1 blocks→int4)", "compiled": "native gguf + compiled"}.get(
            quant, f"native {quant}"
        ) + (f" [{report['kernel']}{'+amx' if report.get('amx') else ''}]" if quant != "fp32" else "")
        if mode != "fp32":
            row.notes.append(logits_vs(ref_logits, native_last_logits(model, tok, EVAL_PROMPTS)))
            row.notes.append(f"quantize {q_s:.1f}s")
        rows.append(row)
        models[mode] = model
        kernels.set_amx(True)
        print(f"  done {row.name}: decode {row.decode:.1f} tok/s", flush=True)

    hf: Row | None = None
    if not args.skip_transformers:
        r = bench_transformers(path, prompt, args.decode_tokens, args.repeats)
        if isinstance(r, str):
            print(r)
        else:
            hf = r
            print(f"  done transformers: decode {hf.decode:.1f} tok/s", flush=True)
    lc: Row | None = None
    if not args.skip_llamacpp:
        r2, _ = bench_llamacpp(path, prompt, args.decode_tokens, args.threads, args.repeats, tok, ref_logits)
        if isinstance(r2, str):
            print(r2)
        else:
            lc = r2
            print(f"  done llama.cpp: decode {lc.decode:.1f} tok/s", flush=True)

    print()
    head = (
        f"{'engine':42s} {'prefill t/s':>11s} {'decode t/s':>10s} {'cpu ms/tok':>10s} {'TTFT ms':>8s} {'mem MB':>7s} "
        f"{'dec/HF':>6s} {'dec/llama':>9s} {'pre/HF':>6s} {'pre/llama':>9s}  notes"
    )
    print(head)
    print("-" * len(head))
    for r in rows + [x for x in (hf, lc) if x is not None]:
        print(
            f"{r.name:42s} {r.prefill:11.1f} {r.decode:10.1f} {r.cpu_ms:10.1f} {r.ttft_ms:8.1f} {r.rss_mb:7.0f} "
            f"{ratio(r.decode, hf.decode if hf else None):>6s} {ratio(r.decode, lc.decode if lc else None):>9s} "
            f"{ratio(r.prefill, hf.prefill if hf else None):>6s} {ratio(r.prefill, lc.prefill if lc else None):>9s}  "
            + "; ".join(r.notes)
        )
    print("cpu ms/tok: median process CPU time of a decode step, all threads (spin-waits included)")
    print("mem MB: native = weights (params + buffers); transformers / llama.cpp = RSS growth while loaded")
    print(f"peak RSS of the whole run: {peak_rss_mb():.0f} MB")

    levels = [int(x) for x in args.concurrency.split(",")]
    sched_modes = ("gguf", "compiled", "compiled-vector", "compiled-torch", *(f"compiled-{i}" for i in kernels.ISAS))
    for mode in [m for m in sched_modes if m in models] or [next(iter(models))]:
        kernels.set_amx(not mode.endswith("-vector"))
        agg = bench_scheduler(models[mode], tok, args.decode_tokens, levels, args.repeats, mode.startswith("compiled"))
        kernels.set_amx(True)
        print(f"\nscheduler ({mode}), {args.decode_tokens} tokens per request, aggregate tokens/s:")
        print("  end to end: all tokens / wall time, the prompts' prefills included; decode: sum of per-request rates")
        first = agg[levels[0]]
        for n, (e2e, dec) in agg.items():
            print(
                f"  {n} concurrent: end to end {e2e:7.1f} tok/s ({ratio(e2e, first[0])}) · "
                f"decode {dec:7.1f} tok/s ({ratio(dec, first[1])})  vs {levels[0]} concurrent"
            )
        if mode == "compiled":
            paths = (True, False) if kernels.amx() else (False,)
            by_rows = {amx: step_ms_by_rows(models[mode], levels, amx) for amx in paths}
            print(f"\ncompiled decode step, median ms by rows (rows x 1 token; ratio to {levels[0]} row):")
            for amx, label in ((True, "enigma + AMX"), (False, f"enigma {kernels.active()}, vector only")):
                if amx not in by_rows:
                    continue
                one = by_rows[amx][levels[0]]
                cells = " · ".join(f"{n}: {t:5.1f} ({t / one:4.2f}x)" for n, t in by_rows[amx].items())
                print(f"  {label:20s} {cells}")


if __name__ == "__main__":
    main()
