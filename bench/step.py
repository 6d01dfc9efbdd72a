"""The decode step by number of rows: what bounds how much batching can gain on this CPU.

The default model prepared as the daemon serves it (``ModelRecipe``, this CPU's kernel set or ``ENIGMA_KERNELS``),
its compiled step loaded from the daemon's cache (built here first when it is missing: minutes), then one decode
step timed at 1, 2, 4 and 8 rows, compiled and eager, in this process (median of ``--steps``). ``8 rows / 1``
beside each is the batching gain of a step: 8 streams can decode at most that many times one stream's rate.
First, the quantized matmuls alone at 1 and 8 rows (what most of a step at 8 rows is).

    .venv/bin/python bench/step.py [--rows 1,2,4,8] [--context 4096] [--max-batch 8] [--threads 2]
    ENIGMA_KERNELS=avx2 .venv/bin/python bench/step.py --matmuls-only      # another set's matmuls, no build
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--matmuls-only", action="store_true", help="only the matmuls: no compiled step to build")
    args = ap.parse_args()
    import torch

    from daemon.modules.llm.native import _artifact_name, step_cache_dir
    from engine import kernels
    from engine.compile import AotUnavailable, ModelRecipe, build_artifact, load_artifact, step_key
    from engine.generate import decode_step
    from engine.loader import default_model_path

    torch.set_num_threads(args.threads)
    print(f"CPU: {kernels.describe()}")
    path = default_model_path()
    recipe = ModelRecipe(str(path), max_seq=args.context, max_batch=args.max_batch)
    loaded, report = recipe.build()
    model = loaded.model
    print(f"kernel set: {(report or {}).get('kernel')}; context {args.context}, cache rows {args.max_batch}")

    def timed(rows: int, compiled: bool) -> float:
        with torch.inference_mode():
            model(torch.full((rows, 16), 7), torch.arange(16)[None].expand(rows, 16), slot=0, last_only=True)
            times = []
            for i in range(args.steps):
                tokens, pos = torch.full((rows, 1), 5), torch.full((rows, 1), 16 + i)
                t0 = time.perf_counter()
                decode_step(model, step if compiled else None, tokens, pos, 17 + i)
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    print("quantized matmuls, one call each, summed over the model's layers (ms):")
    layer = model.layers[0]
    mats = {
        "wqkv": layer.attention.wqkv,
        "wo": layer.attention.wo,
        "w13": layer.feed_forward.w13,
        "w2": layer.feed_forward.w2,
        "head": model.output,
    }
    n_layers = len(model.layers)
    sums = {}
    for rows in (1, 8):
        total = 0.0
        for name, mod in mats.items():
            x = torch.randn(rows, mod.in_features)
            with torch.inference_mode():
                times = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    mod(x)
                    times.append(time.perf_counter() - t0)
            total += statistics.median(times) * 1000 * (1 if name == "head" else n_layers)
        sums[rows] = total
    print(f"  1 row {sums[1]:.2f}, 8 rows {sums[8]:.2f} ({sums[8] / sums[1]:.2f}x the time for 8x the rows)")
    if args.matmuls_only:
        return
    key = step_key(model, recipe, (1, 2))
    where = step_cache_dir() / _artifact_name(path)
    try:
        step = load_artifact(model, where, key)
    except AotUnavailable as exc:
        print(f"building the compiled step ({exc}); this takes minutes", flush=True)
        build_artifact(model, key, where)
        step = load_artifact(model, where, key)

    levels = [int(r) for r in args.rows.split(",")]
    got = {r: (timed(r, True), timed(r, False)) for r in levels}
    print(f"{'rows':>5}{'compiled ms':>13}{'tok/s':>9}{'x one':>7}{'eager ms':>10}{'x one':>7}")
    c1, e1 = got[levels[0]]
    for r, (c, e) in got.items():
        print(f"{r:>5}{c:>13.2f}{r * 1000 / c:>9.0f}{r * c1 / c:>7.2f}{e:>10.2f}{r * e1 / e:>7.2f}")


if __name__ == "__main__":
    main()
