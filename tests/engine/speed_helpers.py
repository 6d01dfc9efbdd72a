"""Small real things the sampling/generation/scheduler/quant tests share: a byte-level BPE tokenizer trained on
a few sentences (emoji and CJK split into byte tokens, as in real models) and a tiny random Llama."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from engine.model import ModelConfig, Transformer

CORPUS = [
    "hello world, hello there. The quick brown fox jumps over the lazy dog.",
    "Stop here STOP now. END of the line; the end.",
    "日本語のテキスト 中文文本 😀 🚀 emoji and CJK characters.",
] * 20


class ByteTokenizer:
    """The generation protocol (encode, decode, stop_ids, eos_id) over a `tokenizers` byte-level BPE."""

    def __init__(self, hf, stop_ids: set[int] | None = None) -> None:  # hf: tokenizers.Tokenizer
        self.hf = hf
        self.eos_id: int | None = hf.token_to_id("<eos>")
        self.stop_ids: set[int] = {self.eos_id} if stop_ids is None else set(stop_ids)
        self.vocab_size = hf.get_vocab_size()

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def with_stop_ids(self, stop_ids: set[int]) -> ByteTokenizer:
        return ByteTokenizer(self.hf, stop_ids)


@lru_cache(maxsize=1)
def _trained():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer(_trained())


def tiny_model(seed: int = 0, max_batch: int = 4, max_seq: int = 256, **overrides) -> Transformer:
    """pi_zero-sized random Llama with the tokenizer's vocabulary and a cache of ``max_batch`` rows."""
    torch.manual_seed(seed)
    overrides.setdefault("tie_embeddings", False)
    cfg = ModelConfig.from_name("pi_zero", vocab_size=_trained().get_vocab_size(), max_seq_len=max_seq, **overrides)
    model = Transformer(cfg).eval()
    # Tied N(0, 1) embeddings make every row peak at its input token; an untied, scaled head gives varied text
    # whose greedy choices are still well separated.
    with torch.no_grad():
        model.output.weight.mul_(3.0)
    model.setup_cache(max_batch, max_seq)
    return model
