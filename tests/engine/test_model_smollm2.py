"""The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF): our loader + model against transformers loading the
very same file (it dequantizes it itself), on logits and on greedy continuations."""

from __future__ import annotations

import pytest
import torch

from engine.loader import load_model

pytestmark = pytest.mark.model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "日本語で「こんにちは」は",
    "Once upon a time, in a land far away, there lived a",
]


@pytest.fixture(scope="module")
def models(smollm2_path, smollm2_dir):
    from transformers import AutoModelForCausalLM

    ours = load_model(smollm2_path)
    ref = AutoModelForCausalLM.from_pretrained(smollm2_dir, gguf_file=smollm2_path.name, dtype=torch.float32).eval()
    return ours, ref


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers_on_the_same_gguf(models, prompt):
    ours, ref = models
    ids = torch.tensor([ours.tokenizer.encode(prompt)])
    with torch.no_grad():
        diff = (ours.model(ids) - ref(ids).logits).abs().max().item()
    assert diff <= 1e-3


def test_chat_prompt_logits_match_transformers(models):
    ours, ref = models
    text = ours.tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}])
    ids = torch.tensor([ours.tokenizer.encode(text)])
    with torch.no_grad():
        assert (ours.model(ids) - ref(ids).logits).abs().max().item() <= 1e-3


def _greedy_with_cache(model, prompt_ids: list[int], n: int, eos: int | None) -> list[int]:
    """Argmax decoding through our KV cache, stopping after EOS as ``generate`` does."""
    model.setup_cache(max_batch=1, max_seq=len(prompt_ids) + n)
    try:
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids]), torch.arange(len(prompt_ids))[None], last_only=True)
            out = []
            for step in range(n):
                tok = int(logits[0, -1].argmax())
                out.append(tok)
                if tok == eos:
                    break
                pos = len(prompt_ids) + step
                logits = model(torch.tensor([[tok]]), torch.tensor([[pos]]))
    finally:
        model.drop_cache()
    return out


@pytest.mark.parametrize("prompt", [PROMPTS[0], "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"])
def test_greedy_continuation_equals_transformers_generate(models, prompt):
    ours, ref = models
    ids = ours.tokenizer.encode(prompt)
    got = _greedy_with_cache(ours.model, ids, 20, eos=ref.generation_config.eos_token_id)
    with torch.no_grad():
        want = ref.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=ours.tokenizer.pad_id,
        )[0, len(ids) :].tolist()
    assert got == want
    assert len(got) >= 5


def test_the_default_model_knows_its_shape(models):
    ours, _ = models
    c = ours.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size) == (576, 30, 9, 3, 49152)
    assert c.tie_embeddings
    assert c.rope_theta == 100000.0
    assert ours.meta["quant"] == "Q4_1"
    assert ours.meta["params"] == 134_515_008
