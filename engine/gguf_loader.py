"""GGUF (llama.cpp's file format) → our model: hyperparameters, weights, tokenizer and chat template.

Reading goes through the ``gguf`` package (``GGUFReader`` maps the file; ``gguf.quants.dequantize`` expands
quantized blocks). What differs between architectures — metadata keys → ``ModelConfig``, tensor names → our
parameters, whether Q/K rows were permuted for llama.cpp's interleaved RoPE — is the family's
(``engine.families``); this module reads the file, dequantizes, and un-permutes where the family says.
``unpermute_qk`` works row-wise, so it applies equally to dequantized weights and to raw quantized row blocks
(the int4 kernels load blocks directly with it, ``engine.quant_gguf``).

Every failure a user can cause with a file (not a GGUF, truncated, unknown architecture, exotic quant type,
missing tensor) surfaces as an ``EngineError`` naming the file and the problem.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from engine.errors import (
    EngineError,
    ModelFileError,
    ModelNotFound,
    TokenizerError,
    UnsupportedQuantType,
)
from engine.families import Family, gguf_family, unpermute_qk
from engine.model import ModelConfig
from engine.tokenizer import Tokenizer
from engine.weights import ModelParts

if TYPE_CHECKING:
    import gguf

SUPPORTED_TENSOR_TYPES = frozenset(
    t.name
    for t in (
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q2_K,
        GGMLQuantizationType.Q3_K,
        GGMLQuantizationType.Q4_K,
        GGMLQuantizationType.Q5_K,
        GGMLQuantizationType.Q6_K,
    )
)
_GGUF_MAGIC = b"GGUF"


# -------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _reader_class() -> type:
    import gguf

    class _PlainArrayReader(gguf.GGUFReader):
        """``GGUFReader`` over a plain ndarray view of its memory map: every slice of an ``np.memmap`` runs
        Python-level bookkeeping, which makes parsing a 50k-token vocabulary and dequantizing 2-3x slower."""

        # gguf's type for ``data`` is inferred from the ``np.memmap`` it assigns, though it only ever slices and
        # views it as an array: a plain ndarray is what it needs.
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
            elif nptype is None:  # arrays of arrays: rare and small
                return super()._get_field_parts(orig_offs, raw_type)
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
    """``ModelConfig`` from the file's metadata, read by its family; ``UnsupportedModel`` for architectures we do
    not run, ``ModelFileError`` for metadata that describes no valid model."""
    f = fields if fields is not None else gguf_metadata(reader, max_array=0)
    family = gguf_family(f.get(Keys.General.ARCHITECTURE))
    tokens = reader.fields.get(Keys.Tokenizer.LIST)
    try:
        return family.config_from_gguf(
            f, {t.name: t for t in reader.tensors}, len(tokens.data) if tokens is not None else None
        )
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # a value of the wrong type or an impossible shape
        raise ModelFileError(f"the GGUF metadata describes no valid model: {exc}") from exc


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
        blocks = np.asarray(t.data).reshape(-1, GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][1])
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        q8 = blocks[:, 2:].view(np.int8).astype(np.float32)
        arr = q8 * d
    else:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))


def _unpermuted(family: Family, config: ModelConfig, name: str, w: Any) -> Any:
    """``w`` (float rows or raw quantized row blocks) in our rotate-half layout, where the family's converter
    permuted it."""
    kind = family.gguf_kind(name)
    heads = family.qk_heads(kind, config) if kind is not None else None
    return w if heads is None else unpermute_qk(w, heads)


def read_gguf(path: str | Path) -> ModelParts:
    """Config, float32 weights in our names (Q/K un-permuted), tokenizer and metadata of a GGUF model."""
    p = Path(path)
    reader = open_gguf(p)
    fields = gguf_metadata(reader)
    config = gguf_config(reader, fields)
    arch = fields[Keys.General.ARCHITECTURE]
    family = gguf_family(arch)
    try:
        tokenizer = Tokenizer.from_gguf_fields(fields)
    except EngineError:
        raise
    except Exception as exc:  # a malformed vocabulary trips deep inside tokenizers
        raise TokenizerError(f"{p}: cannot build the tokenizer from the metadata: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    ignored = []
    for t in reader.tensors:
        ours = family.gguf_to_ours(t.name)
        if ours is None:
            if not family.is_config_tensor(t.name):
                ignored.append(t.name)
            continue
        state[ours] = _unpermuted(family, config, t.name, dequantize_tensor(t))
    meta = {
        "format": "gguf",
        "path": str(p),
        "name": fields.get(Keys.General.NAME),
        "architecture": arch,
        "quant": gguf_quant_name(reader),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "license": fields.get(Keys.General.LICENSE),
        "ignored_tensors": ignored,
    }
    return ModelParts(config=config, state=state, tokenizer=tokenizer, meta=meta)
