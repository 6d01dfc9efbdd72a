"""How close each engine path's greedy output stays to the float model's, against llama.cpp's, in one run.

The reference is the default model (SmolLM2-135M-Instruct Q4_1) dequantized to float32 and run exactly (no
quantized kernels): the weights every path shares. Each path then decodes the same prompts greedily for
``--tokens`` tokens; its score is the number of leading tokens that equal the reference's, summed over the
prompts (a greedy run that leaves the reference never comes back, so later agreement counts for nothing).

Paths: enigma's default (the best kernel set this CPU runs), every other set the CPU runs (forced), PyTorch's
kernels, and llama.cpp on the same GGUF (the same token ids in). Target: the default path scores at least
llama.cpp's (``default / llama.cpp >= 1.0``).

    .venv/bin/python bench/fidelity.py [--tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "The best way to learn a new language is",
    "1, 2, 3, 4, 5,",
    "Photosynthesis is the process by which",
]


def native_greedy(kernel: str | None, ids: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy continuations from the native engine: ``None`` is the exact float model; else a kernel set."""
    import torch

    from engine.loader import default_model_path, load_model
    from engine.quant import prepare_for_inference

    loaded = load_model(default_model_path(), max_seq_len=512)
    model = loaded.model
    if kernel is not None:
        with torch.no_grad():
            prepare_for_inference(model, "auto", loaded.source, kernel=kernel)
    model.setup_cache(1, 512)
    out = []
    with torch.inference_mode():
        for prompt in ids:
            logits = model(torch.tensor([prompt]), torch.arange(len(prompt))[None], slot=0, last_only=True)[0, -1]
            got: list[int] = []
            while len(got) < tokens:
                got.append(int(logits.argmax()))
                pos = torch.tensor([[len(prompt) + len(got) - 1]])
                logits = model(torch.tensor([[got[-1]]]), pos, slot=0, last_only=True)[0, -1]
            out.append(got)
    return out


def llama_cpp_greedy(ids: list[list[int]], tokens: int, threads: int) -> list[list[int]]:
    from llama_cpp import Llama

    from engine.loader import default_model_path

    llm = Llama(model_path=str(default_model_path()), n_ctx=512, n_threads=threads, verbose=False)
    out = []
    for prompt in ids:
        got: list[int] = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            got.append(int(t))
            if len(got) == tokens:
                break
        out.append(got)
    return out


def agreement(ref: list[list[int]], other: list[list[int]]) -> tuple[int, int]:
    """(leading tokens equal to the reference, summed; prompts equal throughout)."""
    total = whole = 0
    for a, b in zip(ref, other, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        total += n
        whole += int(n == len(a))
    return total, whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-llamacpp", action="store_true")
    args = ap.parse_args()
    import torch

    from engine import kernels
    from engine.loader import default_model_path, load_model

    torch.set_num_threads(args.threads)
    print(f"CPU: {kernels.describe()}")
    tok = load_model(default_model_path(), max_seq_len=512).tokenizer
    ids = [tok.encode(p, add_bos=tok.add_bos) for p in PROMPTS]
    ref = native_greedy(None, ids, args.tokens)
    best = kernels.choose()
    paths: dict[str, str] = {}
    if best is not None:
        paths[f"enigma default ({best})"] = best
    for isa in kernels.SETS:
        if isa != best and kernels.load(isa):
            paths[f"enigma {isa} (forced)"] = isa
    paths["PyTorch's kernels"] = "torch"
    scores = {name: agreement(ref, native_greedy(kernel, ids, args.tokens)) for name, kernel in paths.items()}
    if not args.skip_llamacpp:
        scores["llama.cpp (same GGUF)"] = agreement(ref, llama_cpp_greedy(ids, args.tokens, args.threads))
    print(f"{len(PROMPTS)} prompts x {args.tokens} greedy tokens; reference: the float32 model, exact")
    print(f"{'path':<32}{'tokens equal':>14}{'prompts equal':>15}")
    for name, (total, whole) in scores.items():
        print(f"{name:<32}{total:>9}/{len(PROMPTS) * args.tokens:<4}{whole:>10}/{len(PROMPTS)}")
    ref_name = "llama.cpp (same GGUF)"
    if ref_name in scores:
        default = scores.get(f"enigma default ({best})", scores["PyTorch's kernels"])[0]
        print(f"default path / llama.cpp: {default / max(scores[ref_name][0], 1):.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
