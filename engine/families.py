"""Model families: one record per architecture, the one place that knows how each is stored.

A checkpoint names its architecture (GGUF's ``general.architecture``, ``config.json``'s ``model_type``);
``gguf_family``/``hf_family`` turn that name into a ``Family``, and the loaders (``engine.gguf_loader``,
``engine.hf_loader``, ``engine.quant_gguf``) ask the record instead of knowing any family themselves:

* **config translation**: ``config_from_gguf(fields, tensors)`` and ``config_from_hf(cfg)`` build the
  ``ModelConfig``. Keys are ``gguf.Keys`` constants; a family whose ``config.json`` needs more than the Llama
  reading gives ``hf_quirks`` (Mistral caps the context at its sliding window).
* **tensor names**: ``tensors`` maps each of llama.cpp's tensor kinds (``gguf.MODEL_TENSOR``; its file name comes
  from ``gguf.TENSOR_NAMES``) to our parameter and to the Hugging Face name of the same tensor. Every name table
  of both formats is derived from it.
* **Q/K permutation**: llama.cpp's converter (``LlamaModel.permute``) reorders the rows of Q and K of Llama-style
  models for its interleaved RoPE; our model uses the rotate-half layout. ``qk_permuted`` says whether a family's
  GGUF files are stored that way, and ``qk_heads`` which tensors to undo with ``unpermute_qk`` and in how many heads.
* **biases and the rest of the math**: ``attn_bias``/``mlp_bias``/``tie_embeddings`` are ``True``/``False`` when the
  architecture fixes them and ``None`` when the checkpoint says (``config.json``; in a GGUF, whether the tensor is
  there). ``norm``, ``activation`` and ``block`` name the math a family needs; ``check_runnable`` refuses a family
  whose math ``engine/model.py`` does not implement, so a record can be written before the math exists.

Adding a family (Gemma, Phi-3, a mixture of experts, a state-space model):

1. When it needs math the model lacks — Gemma's GELU-tanh gate, its ``(1 + w)`` RMSNorm and scaled embeddings,
   Phi-3's fused ``qkv``/``gate_up`` tensors, MoE routing, SSM blocks — add it to ``engine/model.py`` behind a
   ``ModelConfig`` field, and its name to ``RUNNABLE``.
2. Write one ``Family(...)``: its GGUF and Hugging Face names, the llama.cpp architecture it follows
   (``gguf_arch``), a tensor table (``LLAMA_TENSORS`` when the layout is Llama's; a test checks every entry against
   gguf's own name map), whether Q/K are permuted, its biases, and ``hf_quirks`` when its ``config.json`` differs.
3. Add it to ``FAMILIES`` and give it a tiny checkpoint in ``tests/engine/test_families.py`` (a test fails
   until it has one); that test loads it through both loaders against transformers' logits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from gguf.constants import MODEL_ARCH, MODEL_TENSOR, TENSOR_NAMES, Keys

from engine.errors import ModelFileError, UnsupportedModel
from engine.model import ModelConfig
from engine.weights import map_name

# What engine/model.py implements today, by the names the records use.
RUNNABLE: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "norm": frozenset(("rms",)),  # RMSNorm with the weight as is (Gemma's would be "rms_plus_one")
        "activation": frozenset(("silu",)),  # the gate of the gated feed-forward (SwiGLU); Gemma's is "gelu_tanh"
        "block": frozenset(("dense",)),  # attention + one feed-forward; "moe", "ssm" are the next ones
    }
)


class Tensor(NamedTuple):
    """One tensor kind of a family: our module, its Hugging Face module (``{i}`` is the layer), and whether it may
    carry a bias (whether the model has one is the config's ``attn_bias``/``mlp_bias``)."""

    ours: str
    hf: str
    bias: bool = False


# The Llama layout, by llama.cpp's tensor kinds. Llama, Mistral and Qwen2 store the same tensors under the same names.
LLAMA_TENSORS: Mapping[MODEL_TENSOR, Tensor] = MappingProxyType(
    {
        MODEL_TENSOR.TOKEN_EMBD: Tensor("tok_embeddings", "model.embed_tokens"),
        MODEL_TENSOR.OUTPUT_NORM: Tensor("norm", "model.norm"),
        MODEL_TENSOR.OUTPUT: Tensor("output", "lm_head"),
        MODEL_TENSOR.ATTN_NORM: Tensor("layers.{i}.attention_norm", "model.layers.{i}.input_layernorm"),
        MODEL_TENSOR.ATTN_Q: Tensor("layers.{i}.attention.wq", "model.layers.{i}.self_attn.q_proj", bias=True),
        MODEL_TENSOR.ATTN_K: Tensor("layers.{i}.attention.wk", "model.layers.{i}.self_attn.k_proj", bias=True),
        MODEL_TENSOR.ATTN_V: Tensor("layers.{i}.attention.wv", "model.layers.{i}.self_attn.v_proj", bias=True),
        MODEL_TENSOR.ATTN_OUT: Tensor("layers.{i}.attention.wo", "model.layers.{i}.self_attn.o_proj"),
        MODEL_TENSOR.FFN_NORM: Tensor("layers.{i}.ffn_norm", "model.layers.{i}.post_attention_layernorm"),
        MODEL_TENSOR.FFN_GATE: Tensor("layers.{i}.feed_forward.w1", "model.layers.{i}.mlp.gate_proj", bias=True),
        MODEL_TENSOR.FFN_UP: Tensor("layers.{i}.feed_forward.w3", "model.layers.{i}.mlp.up_proj", bias=True),
        MODEL_TENSOR.FFN_DOWN: Tensor("layers.{i}.feed_forward.w2", "model.layers.{i}.mlp.down_proj", bias=True),
    }
)
# Tensors a GGUF may carry that are configuration, not parameters: Llama 3.1's RoPE frequency divisors.
CONFIG_TENSORS = frozenset((MODEL_TENSOR.ROPE_FREQS,))


def gguf_tensor_name(kind: MODEL_TENSOR, layer: int | str | None = None, suffix: str = "weight") -> str:
    """The GGUF name of a tensor: ``gguf_tensor_name(ATTN_Q, 3)`` → ``blk.3.attn_q.weight``."""
    base = TENSOR_NAMES[kind]
    if "{bid}" in base:
        if layer is None:
            raise ValueError(f"{kind.name} is a per-layer tensor: give its layer")
        base = base.replace("{bid}", str(layer))
    return f"{base}.{suffix}"


def _layer_split(templates: list[str]) -> tuple[re.Pattern[str], str]:
    """The regex that splits a per-layer name into (layer, rest), and the ``{i}`` prefix, from a name table."""
    prefixes = {t.split("{i}")[0] for t in templates if "{i}" in t}
    if len(prefixes) != 1:
        raise ValueError(f"per-layer names must share one prefix, not {sorted(prefixes)}")
    prefix = prefixes.pop()
    return re.compile("^" + re.escape(prefix) + r"(\d+)\.(.+)$"), prefix + "{i}."


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


# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # one record per architecture: compared by identity
class Family:
    """Everything the loaders need to know about one architecture (see the module docstring)."""

    name: str
    arch: str  # ModelConfig.arch: the math it runs as (Mistral runs as Llama)
    gguf_archs: tuple[str, ...]  # general.architecture values in GGUF files
    hf_model_types: tuple[str, ...]  # config.json model_type values
    gguf_arch: MODEL_ARCH  # the llama.cpp architecture whose converter and tensor set this family follows
    tensors: Mapping[MODEL_TENSOR, Tensor] = field(default_factory=lambda: LLAMA_TENSORS)
    qk_permuted: bool = False  # GGUF Q/K rows interleaved by llama.cpp's converter
    # Fixed by the architecture, or None when config.json says (a GGUF's tensor list always decides).
    attn_bias: bool | None = None  # q/k/v biases
    mlp_bias: bool | None = None
    tie_embeddings: bool | None = None  # output head shares the embedding (Gemma: always)
    norm: str = "rms"
    activation: str = "silu"
    block: str = "dense"
    # (config.json, the ModelConfig fields read the Llama way) → the fields this family's checkpoint means.
    hf_quirks: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)

    def check_runnable(self) -> None:
        """Refuse a family whose math the model does not implement, naming what is missing."""
        lacking = [f"{what} {getattr(self, what)!r}" for what, ok in RUNNABLE.items() if getattr(self, what) not in ok]
        if lacking:
            raise UnsupportedModel(
                f"model family {self.name!r} needs {', '.join(lacking)}, which this engine does not implement",
                {"family": self.name, "missing": lacking},
            )

    # -- names ------------------------------------------------------------------------------------------------------
    @cached_property
    def gguf_names(self) -> Mapping[str, str]:
        """GGUF tensor name → our parameter name; ``{i}`` is the layer. Biases included: a file may lack them."""
        out: dict[str, str] = {}
        for kind, t in self.tensors.items():
            for suffix in ("weight", "bias") if t.bias else ("weight",):
                layer = "{i}" if "{bid}" in TENSOR_NAMES[kind] else None
                out[gguf_tensor_name(kind, layer, suffix)] = f"{t.ours}.{suffix}"
        return MappingProxyType(out)

    @cached_property
    def hf_names(self) -> Mapping[str, str]:
        """Hugging Face parameter name → ours; ``{i}`` is the layer."""
        out: dict[str, str] = {}
        for t in self.tensors.values():
            for suffix in ("weight", "bias") if t.bias else ("weight",):
                out[f"{t.hf}.{suffix}"] = f"{t.ours}.{suffix}"
        return MappingProxyType(out)

    @cached_property
    def _gguf_split(self) -> tuple[re.Pattern[str], str]:
        return _layer_split(list(self.gguf_names))

    @cached_property
    def _hf_split(self) -> tuple[re.Pattern[str], str]:
        return _layer_split(list(self.hf_names))

    def gguf_to_ours(self, name: str) -> str | None:
        """Our parameter name for a GGUF tensor name, or ``None`` when it is not one of our parameters."""
        return map_name(name, self.gguf_names, *self._gguf_split)

    def hf_to_ours(self, name: str) -> str | None:
        """Our parameter name for a Hugging Face parameter name, or ``None`` (rotary buffers, …)."""
        return map_name(name, self.hf_names, *self._hf_split)

    def is_config_tensor(self, name: str) -> bool:
        """Whether a GGUF tensor is read into the config rather than loaded as a parameter."""
        return any(name == gguf_tensor_name(kind) for kind in CONFIG_TENSORS)

    def qk_heads(self, kind: MODEL_TENSOR, config: ModelConfig) -> int | None:
        """The head count to un-permute a GGUF tensor of ``kind`` with, or ``None`` when it is stored as we use it."""
        if not self.qk_permuted:
            return None
        return {MODEL_TENSOR.ATTN_Q: config.n_heads, MODEL_TENSOR.ATTN_K: config.kv_heads}.get(kind)

    def gguf_kind(self, name: str) -> MODEL_TENSOR | None:
        """The tensor kind of a GGUF tensor name (``blk.3.attn_q.bias`` → ``ATTN_Q``), or ``None``."""
        base = name.rsplit(".", 1)[0]  # without .weight/.bias
        pattern, prefix = self._gguf_split
        m = pattern.match(base)
        return self._gguf_kinds.get(prefix + m.group(2) if m else base)

    @cached_property
    def _gguf_kinds(self) -> Mapping[str, MODEL_TENSOR]:
        return MappingProxyType({TENSOR_NAMES[kind].replace("{bid}", "{i}"): kind for kind in self.tensors})

    # -- config -----------------------------------------------------------------------------------------------------
    def config_from_gguf(
        self, f: Mapping[str, Any], tensors: Mapping[str, Any], n_tokens: int | None = None
    ) -> ModelConfig:
        """``ModelConfig`` from GGUF metadata ``f`` (plain values), the file's tensors by name (each with ``shape``
        and ``data``, as ``gguf.ReaderTensor``) and the length of its token list. A GGUF lists its tensors, so the
        file decides biases and tied embeddings for every family. Values of the wrong type raise ``TypeError`` or
        ``ValueError``."""
        arch = f[Keys.General.ARCHITECTURE]

        def key(template: str, default: Any = None) -> Any:
            name = template.format(arch=arch)
            v = f.get(name, default)
            if v is None:
                raise ModelFileError(f"GGUF metadata lacks {name}")
            return v

        def opt(template: str) -> Any:
            return f.get(template.format(arch=arch))

        # The embedding's row count is the truth; the metadata may omit vocab_size (older converters).
        embd = tensors.get(gguf_tensor_name(MODEL_TENSOR.TOKEN_EMBD))
        vocab = int(embd.shape[1]) if embd is not None else None
        if vocab is None:
            vocab = opt(Keys.LLM.VOCAB_SIZE) or n_tokens
        if vocab is None:
            raise ModelFileError("cannot tell the vocabulary size: no vocab_size, tokens or token_embd.weight")
        n_heads = int(key(Keys.Attention.HEAD_COUNT))
        dim = int(key(Keys.LLM.EMBEDDING_LENGTH))
        head_dim = opt(Keys.Attention.KEY_LENGTH) or opt(Keys.Rope.DIMENSION_COUNT) or dim // n_heads
        rope_scaling: dict[str, Any] | None = None
        kind = opt(Keys.Rope.SCALING_TYPE)
        if kind in ("linear", "yarn"):
            rope_scaling = {"type": kind, "factor": float(key(Keys.Rope.SCALING_FACTOR))}
            orig = opt(Keys.Rope.SCALING_ORIG_CTX_LEN)
            if orig:
                rope_scaling["original_max_position_embeddings"] = int(orig)
        elif kind not in (None, "none"):
            raise UnsupportedModel(f"unsupported RoPE scaling type {kind!r} in the GGUF metadata")
        freqs = tensors.get(gguf_tensor_name(MODEL_TENSOR.ROPE_FREQS))
        if freqs is not None:  # llama 3.1+: per-frequency divisors stored as a tensor
            factors = [float(x) for x in np.asarray(freqs.data, dtype=np.float32)]
            rope_scaling = {"type": "freq_factors", "factors": factors}

        def present(kind: MODEL_TENSOR) -> bool:
            return gguf_tensor_name(kind, 0, "bias") in tensors

        return ModelConfig(
            vocab_size=int(vocab),
            dim=dim,
            n_layers=int(key(Keys.LLM.BLOCK_COUNT)),
            n_heads=n_heads,
            n_kv_heads=int(opt(Keys.Attention.HEAD_COUNT_KV) or n_heads),
            ffn_dim=int(key(Keys.LLM.FEED_FORWARD_LENGTH)),
            head_dim=int(head_dim),
            norm_eps=float(key(Keys.Attention.LAYERNORM_RMS_EPS, 1e-5)),
            rope_theta=float(key(Keys.Rope.FREQ_BASE, 10000.0)),
            rope_scaling=rope_scaling,
            max_seq_len=int(key(Keys.LLM.CONTEXT_LENGTH, 2048)),
            tie_embeddings=gguf_tensor_name(MODEL_TENSOR.OUTPUT) not in tensors,
            attn_bias=present(MODEL_TENSOR.ATTN_Q),
            mlp_bias=present(MODEL_TENSOR.FFN_UP),
            arch=self.arch,
            bos_token_id=f.get(Keys.Tokenizer.BOS_ID),
            eos_token_id=f.get(Keys.Tokenizer.EOS_ID),
        )

    def config_from_hf(self, cfg: Mapping[str, Any]) -> ModelConfig:
        """``ModelConfig`` from a transformers ``config.json``; a missing key raises ``KeyError``, a value of the
        wrong type ``TypeError``/``ValueError`` (``engine.hf_loader`` names them)."""
        heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        theta, scaling = hf_rope(cfg)
        eos = cfg.get("eos_token_id")
        fields: dict[str, Any] = {
            "vocab_size": int(cfg["vocab_size"]),
            "dim": dim,
            "n_layers": int(cfg["num_hidden_layers"]),
            "n_heads": heads,
            "n_kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "ffn_dim": int(cfg["intermediate_size"]),
            "head_dim": int(cfg.get("head_dim") or dim // heads),
            "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "rope_theta": theta,
            "rope_scaling": scaling,
            "max_seq_len": int(cfg.get("max_position_embeddings", 2048)),
            "tie_embeddings": _fixed(self.tie_embeddings, bool(cfg.get("tie_word_embeddings", False))),
            "attn_bias": _fixed(self.attn_bias, bool(cfg.get("attention_bias", False))),
            "mlp_bias": _fixed(self.mlp_bias, bool(cfg.get("mlp_bias", False))),
            "arch": self.arch,
            "bos_token_id": cfg.get("bos_token_id"),
            "eos_token_id": eos[0] if isinstance(eos, list) and eos else eos,
        }
        if self.hf_quirks is not None:
            fields = self.hf_quirks(cfg, fields)
        return ModelConfig(**fields)


def _fixed(value: bool | None, from_checkpoint: bool) -> bool:
    return from_checkpoint if value is None else value


def hf_rope(cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either spelling — ``rope_scaling`` + ``rope_theta`` (transformers 4) or
    ``rope_parameters`` (transformers 5); scaling is ``None`` for plain RoPE."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form; llama has one type
        params = params["full_attention"]
    scaling = dict(params) if isinstance(params, dict) else dict(cfg.get("rope_scaling") or {})
    theta = float(scaling.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None)
    if kind in (None, "default"):
        return theta, None
    if kind == "dynamic":
        # transformers' dynamic NTK leaves RoPE untouched up to max_position_embeddings and rescales every
        # position once a sequence grows past it. Our table is static, so we run the exact unscaled RoPE and
        # keep the context at max_position_embeddings rather than approximate beyond it.
        return theta, None
    return theta, {"type": kind, **scaling}


def _mistral_window(cfg: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Full attention equals Mistral's sliding-window attention up to the window: cap the context there."""
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", True):
        fields["max_seq_len"] = min(fields["max_seq_len"], int(window))
    return fields


# --------------------------------------------------------------------------------------------------------------
LLAMA = Family(
    name="llama",
    arch="llama",
    gguf_archs=("llama",),
    hf_model_types=("llama",),
    gguf_arch=MODEL_ARCH.LLAMA,
    qk_permuted=True,
)
# llama.cpp's converter writes Mistral checkpoints as "llama"; other converters say "mistral". Either way it is
# Llama's math with Llama's permuted Q/K.
MISTRAL = Family(
    name="mistral",
    arch="llama",
    gguf_archs=("mistral",),
    hf_model_types=("mistral",),
    gguf_arch=MODEL_ARCH.LLAMA,
    qk_permuted=True,
    hf_quirks=_mistral_window,
)
# Qwen2: q/k/v biases always (its config.json has no attention_bias key); llama.cpp stores its Q/K unpermuted.
QWEN2 = Family(
    name="qwen2",
    arch="qwen2",
    gguf_archs=("qwen2",),
    hf_model_types=("qwen2",),
    gguf_arch=MODEL_ARCH.QWEN2,
    attn_bias=True,
)

FAMILIES: tuple[Family, ...] = (LLAMA, MISTRAL, QWEN2)


def _lookup(value: Any, attr: str, what: str, key: str) -> Family:
    for family in FAMILIES:
        if value in getattr(family, attr):
            family.check_runnable()
            return family
    known = ", ".join(name for family in FAMILIES for name in getattr(family, attr))
    raise UnsupportedModel(f"unsupported {what} {value!r} (this engine runs {known})", {key: value})


def gguf_family(arch: Any) -> Family:
    """The family of a GGUF ``general.architecture``; ``UnsupportedModel`` naming it and what we run otherwise."""
    return _lookup(arch, "gguf_archs", "model architecture", "architecture")


def hf_family(model_type: Any) -> Family:
    """The family of a ``config.json`` ``model_type``; ``UnsupportedModel`` naming it and what we run otherwise."""
    return _lookup(model_type, "hf_model_types", "model type", "model_type")
