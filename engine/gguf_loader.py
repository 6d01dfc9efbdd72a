"""GGUF (llama.cpp's file format) → our model: hyperparameters, weights, tokenizer and chat template.

Reading goes through the ``gguf`` package (``GGUFReader`` maps the file; ``gguf.quants.dequantize`` expands
quantized blocks), so this module only knows llama.cpp's conventions:

* metadata keys ``<arch>.block_count``, ``<arch>.attention.head_count`` … → ``ModelConfig``;
* tensor names ``blk.N.attn_q.weight`` … → our parameter names, in one table (``GGUF_NAME_MAP``);
* llama.cpp's converter permutes the rows of Q and K of llama-family models for its interleaved RoPE, while
  our model uses the rotate-half layout: ``unpermute_qk`` undoes that, row-wise, so it applies equally to
  dequantized weights and to raw quantized row blocks (the int8/int4 kernels load blocks directly with it).

Every failure a user can cause with a file (not a GGUF, truncated, unknown architecture, exotic quant type,
missing tensor) surfaces as an ``EngineError`` naming the file and the problem.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.errors import (
    EngineError,
    ModelFileError,
    ModelNotFound,
    TokenizerError,
    UnsupportedModel,
    UnsupportedQuantType,
)
from engine.model import ModelConfig
from engine.tokenizer import Tokenizer
from engine.weights import ModelParts, map_name

if TYPE_CHECKING:
    import gguf

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")
# Architectures whose converter (convert_hf_to_gguf's LlamaModel) permuted Q/K rows for interleaved RoPE.
QK_PERMUTED_ARCHS = frozenset(("llama", "mistral"))

SUPPORTED_TENSOR_TYPES = frozenset(
    ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
)

# GGUF tensor name → our parameter name; ``{i}`` is the layer index. The one name table of this format.
GGUF_NAME_MAP: dict[str, str] = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_q.bias": "layers.{i}.attention.wq.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.attention.wk.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.attention.wv.bias",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "blk.{i}.ffn_gate.bias": "layers.{i}.feed_forward.w1.bias",
    "blk.{i}.ffn_up.bias": "layers.{i}.feed_forward.w3.bias",
    "blk.{i}.ffn_down.bias": "layers.{i}.feed_forward.w2.bias",
}
# Tensors a GGUF may carry that are not parameters: RoPE frequency factors are read into the config instead.
NON_PARAMETER_TENSORS = frozenset(("rope_freqs.weight",))

_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")
_GGUF_MAGIC = b"GGUF"


def gguf_to_our_name(name: str) -> str | None:
    """Our parameter name for a GGUF tensor name, or ``None`` when it is not one of our parameters."""
    return map_name(name, GGUF_NAME_MAP, _LAYER_NAME, "blk.{i}.")


def gguf_tensor_name_map(config: ModelConfig) -> dict[str, str]:
    """Every GGUF tensor name this config can have → our parameter name (biases included; a file may lack them)."""
    out: dict[str, str] = {}
    for g, ours in GGUF_NAME_MAP.items():
        if "{i}" in g:
            for i in range(config.n_layers):
                out[g.replace("{i}", str(i))] = ours.replace("{i}", str(i))
        else:
            out[g] = ours
    return out


def unpermute_qk(w: Any, n_heads: int) -> Any:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs → rotate-half halves), per head.

    Only the order of rows (output features) changes, so ``w`` may be a float matrix, a bias vector, or the
    raw ``(rows, bytes_per_row)`` blocks of a quantized tensor; numpy arrays and torch tensors both work.
    ``n_heads`` is the head count of that projection (``n_kv_heads`` for K).
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ModelFileError(f"a Q/K tensor with {rows} rows does not split into {n_heads} heads of pairs")
    rest = tuple(w.shape[1:])
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: Any, n_heads: int) -> Any:
    """llama.cpp's permutation (rotate-half → interleaved), the inverse of ``unpermute_qk``; used to write GGUFs."""
    rows = w.shape[0]
    rest = tuple(w.shape[1:])
    return w.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2).reshape(w.shape)


# -------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _reader_class() -> type:
    import gguf

    class _PlainArrayReader(gguf.GGUFReader):
        """``GGUFReader`` over a plain ndarray view of its memory map: every slice of an ``np.memmap`` runs
        Python-level bookkeeping, which makes parsing a 50k-token vocabulary and dequantizing 2-3x slower."""

        @property  # type: ignore[override]
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[Any], list[int], list[Any]]:
            """Arrays of strings and numbers as ``gguf`` lays them out (two parts per string, one per number),
            built in one pass: its per-element recursion took 2.8 of the 3 s a 50k-token vocabulary costs."""
            array, string = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
            if raw_type != array or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n = gguf.GGUFValueType(int(raw_itype[0])), int(alen[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if itype != string and nptype is None:  # arrays of arrays: rare and small
                return super()._get_field_parts(orig_offs, raw_type)
            parts: list[Any] = [raw_itype, alen]
            idxs: list[int] = []
            offs = orig_offs + 12
            data = self.data
            if itype == string:
                for _ in range(n):
                    slen = data[offs : offs + 8].view(np.uint64)
                    end = offs + 8 + int(slen[0])
                    if end > len(data):
                        raise ValueError(f"a string at offset {offs} runs past the end of the file")
                    idxs.append(len(parts) + 1)
                    parts += (slen, data[offs + 8 : end])
                    offs = end
            else:
                values = self._get(offs, nptype, n)
                if len(values) != n:
                    raise ValueError(f"an array at offset {offs} runs past the end of the file")
                idxs = list(range(len(parts), len(parts) + n))
                parts += [values[i : i + 1] for i in range(n)]
                offs += int(values.nbytes)
            return offs - orig_offs, parts, idxs, [array, itype] if n else [array]

    return _PlainArrayReader


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Map a GGUF file; a missing, foreign, truncated or corrupt file raises an ``EngineError`` naming it.

    The last file opened is kept (until ``forget_gguf``): loading a model reads it twice, for the float model and
    for its Q4 blocks (``engine.quant_gguf``), and ``gguf`` parses a 50k-token vocabulary in 2–3 s each time."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFound(f"no such model file: {p}")
    st = p.stat()
    return _open_gguf(p.resolve(), st.st_size, st.st_mtime_ns)


def forget_gguf() -> None:
    """Drop the kept reader (its parsed vocabulary is tens of MB) once a model is loaded."""
    _open_gguf.cache_clear()


@lru_cache(maxsize=1)
def _open_gguf(p: Path, size: int, mtime_ns: int) -> gguf.GGUFReader:
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"{p} is not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r})")
    try:
        reader = _reader_class()(str(p))
    except Exception as exc:  # the reader fails with ValueError/IndexError/struct errors deep in numpy
        raise ModelFileError(f"{p} is truncated or corrupt: {exc}") from exc
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelFileError(f"{p} is truncated: tensor {t.name} ends past the end of the file")
    return reader


def gguf_metadata(reader: gguf.GGUFReader, *, max_array: int | None = None) -> dict[str, Any]:
    """The key/value metadata as plain Python values; arrays longer than ``max_array`` are summarised as
    ``"<N items>"`` (a vocabulary is tens of thousands of strings)."""
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if max_array is not None and len(f.types) > 1 and len(f.data) > max_array:
            out[key] = f"<{len(f.data)} items>"
            continue
        try:
            out[key] = f.contents()
        except Exception as exc:
            raise ModelFileError(f"metadata key {key} is corrupt: {exc}") from exc
    return out


def gguf_quant_name(reader: gguf.GGUFReader) -> str:
    """The file's quantization in llama.cpp's words (``Q4_1``, ``F16`` …), from the type most weights use."""
    counts = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return counts.most_common(1)[0][0] if counts else "F32"


def gguf_config(reader: gguf.GGUFReader, fields: dict[str, Any] | None = None) -> ModelConfig:
    """``ModelConfig`` from the file's metadata; raises ``UnsupportedModel`` for architectures we do not run."""
    f = fields if fields is not None else gguf_metadata(reader, max_array=0)
    try:
        return _gguf_config(reader, f)
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # a value of the wrong type or an impossible shape
        raise ModelFileError(f"the GGUF metadata describes no valid model: {exc}") from exc


def _gguf_config(reader: gguf.GGUFReader, f: dict[str, Any]) -> ModelConfig:
    arch = f.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModel(
            f"unsupported model architecture {arch!r} (this engine runs {', '.join(SUPPORTED_ARCHS)})",
            {"architecture": arch},
        )

    def key(name: str, default: Any = None) -> Any:
        v = f.get(f"{arch}.{name}", default)
        if v is None:
            raise ModelFileError(f"GGUF metadata lacks {arch}.{name}")
        return v

    names = {t.name for t in reader.tensors}
    # The embedding's row count is the truth; the metadata may omit vocab_size (older converters).
    vocab = next((int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight"), None)
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = f.get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)
    if vocab is None:
        raise ModelFileError("cannot tell the vocabulary size: no vocab_size, tokens or token_embd.weight")
    n_heads = int(key("attention.head_count"))
    dim = int(key("embedding_length"))
    head_dim = f.get(f"{arch}.attention.key_length") or f.get(f"{arch}.rope.dimension_count") or dim // n_heads
    rope_scaling: dict[str, Any] | None = None
    kind = f.get(f"{arch}.rope.scaling.type")
    if kind in ("linear", "yarn"):
        rope_scaling = {"type": kind, "factor": float(key("rope.scaling.factor"))}
        orig = f.get(f"{arch}.rope.scaling.original_context_length")
        if orig:
            rope_scaling["original_max_position_embeddings"] = int(orig)
    elif kind not in (None, "none"):
        raise UnsupportedModel(f"unsupported RoPE scaling type {kind!r} in the GGUF metadata")
    if "rope_freqs.weight" in names:  # llama 3.1+: per-frequency divisors stored as a tensor
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        rope_scaling = {"type": "freq_factors", "factors": [float(x) for x in np.asarray(t.data, dtype=np.float32)]}
    bias = "blk.0.attn_q.bias" in names
    return ModelConfig(
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(f.get(f"{arch}.attention.head_count_kv") or n_heads),
        ffn_dim=int(key("feed_forward_length")),
        head_dim=int(head_dim),
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_seq_len=int(key("context_length", 2048)),
        tie_embeddings="output.weight" not in names,
        attn_bias=bias,
        mlp_bias="blk.0.ffn_up.bias" in names,
        arch="llama" if arch == "mistral" else arch,
        bos_token_id=f.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=f.get("tokenizer.ggml.eos_token_id"),
    )


def dequantize_tensor(t: Any) -> torch.Tensor:
    """A GGUF tensor as float32 in its logical (rows, cols) shape; the one place GGUF dtypes become torch."""
    import gguf

    name = t.tensor_type.name
    if name not in SUPPORTED_TENSOR_TYPES:
        raise UnsupportedQuantType(
            f"tensor {t.name} uses quantization type {name}, which this engine does not load "
            f"(supported: {', '.join(sorted(SUPPORTED_TENSOR_TYPES))})",
            {"tensor": t.name, "type": name},
        )
    shape = tuple(int(x) for x in reversed(t.shape))
    if name in ("F32", "F16"):
        arr = np.array(t.data, dtype=np.float32)  # a copy: the mapped file is read-only
    elif name in ("Q4_0", "Q4_1"):
        # Vectorised over the whole tensor, with gguf's arithmetic (d·q + m; d·(q − 8)): 10× faster than
        # gguf.quants, which loops over groups of rows in Python (1.9 s of SmolLM2's load).
        from engine.quant_gguf import q4_blocks

        q = q4_blocks(np.asarray(t.data).reshape(shape[0], -1), name)
        if name == "Q4_1":
            return q.dequantize().reshape(shape).contiguous()
        n, k = q.codes.shape  # Q4_0: d·(q − 8), not q4_blocks' d·q + (−8d), which rounds differently
        codes = q.codes.float().reshape(n, k // q.group_size, q.group_size)
        return ((codes - 8) * q.scale.float()[..., None]).reshape(shape).contiguous()
    elif name == "Q8_0":  # d·q per block of 32 (an fp16 d, 32 int8), vectorised likewise: 0.6 s for an embedding
        blocks = np.asarray(t.data).reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        arr = q * d
    else:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))


def read_gguf(path: str | Path) -> ModelParts:
    """Config, float32 weights in our names (Q/K un-permuted), tokenizer and metadata of a GGUF model."""
    p = Path(path)
    reader = open_gguf(p)
    fields = gguf_metadata(reader)
    config = gguf_config(reader, fields)
    arch = fields["general.architecture"]
    try:
        tokenizer = Tokenizer.from_gguf_fields(fields)
    except EngineError:
        raise
    except Exception as exc:  # a malformed vocabulary trips deep inside tokenizers
        raise TokenizerError(f"{p}: cannot build the tokenizer from the metadata: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    ignored = []
    for t in reader.tensors:
        ours = gguf_to_our_name(t.name)
        if ours is None:
            if t.name not in NON_PARAMETER_TENSORS:
                ignored.append(t.name)
            continue
        w = dequantize_tensor(t)
        if arch in QK_PERMUTED_ARCHS and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = config.n_heads if ".attn_q." in t.name else config.kv_heads
            w = unpermute_qk(w, heads)
        state[ours] = w
    meta = {
        "format": "gguf",
        "path": str(p),
        "name": fields.get("general.name"),
        "architecture": arch,
        "quant": gguf_quant_name(reader),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "license": fields.get("general.license"),
        "ignored_tensors": ignored,
    }
    return ModelParts(config=config, state=state, tokenizer=tokenizer, meta=meta)
