"""Weight-only quantization for CPU inference: int8 per output channel, int4 group-wise.

Each quantized layer runs on the kernels chosen when it is built: one of enigma's own sets (``engine.kernels``:
AVX-512 BF16, AVX2, or NEON on ARM — faster at one row and much faster with several) or PyTorch's, where none
runs. The weight layout follows the set: 16-lane tiles for ``avx512``, 8-lane tiles for the others.

Decoding a small model on a CPU reads every weight once per token, so bytes per weight set the speed.
PyTorch ships fused dequantize-and-multiply kernels for this: ``torch._weight_int8pack_mm`` (int8 weights, one
scale per output row) and ``aten._weight_int4pack_mm_for_cpu`` (4-bit codes packed by
``aten._convert_weight_to_int4pack_for_cpu``, a scale and an offset per group of ``group_size`` inputs; it
computes ``w = (code - 8) * scale + zero``). Measured on this machine's AVX-512 CPU, both are fast only with
bfloat16 activations (float32 falls to a scalar path 100× slower), so the quantized layers multiply in bf16
and hand back the caller's dtype; the residual stream, norms and attention keep theirs.

The model holds wq/wk/wv as one ``wqkv`` and w1/w3 as one ``w13`` (``engine.model``): one kernel call per
projection instead of three or two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import kernels
from engine.errors import EngineError
from engine.model import Transformer

MODES = ("int8", "int4")
_Q4_BLOCK = 32
KERNELS = ("enigma", "torch", *kernels.ISAS)  # "enigma": the set engine.kernels chose for this machine
INT4_GROUP_SIZES = (32, 64, 128, 256)
_INNER_K_TILES = 2
_KERNEL_DTYPE = torch.bfloat16
# Each block's projections, as (module in the block, attribute): what quantization replaces.
PROJECTIONS = (("attention", "wqkv"), ("attention", "wo"), ("feed_forward", "w13"), ("feed_forward", "w2"))


class UnsupportedQuantization(EngineError, ValueError):
    code = "bad_request"


class Int8Linear(nn.Module):
    """``y = x @ (q * scale)ᵀ + b`` with int8 ``q`` (out, in) and one scale per output channel."""

    # Buffers, declared for the type checker: what ``register_buffer`` adds reads as ``Tensor | Module`` otherwise.
    weight: Tensor  # the int8 codes in the kernel's layout (``codes()`` gives them as (out, in))
    scales: Tensor
    bias: Tensor | None

    def __init__(self, qweight: Tensor, scales: Tensor, bias: Tensor | None = None, kernel: str | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.kernel = _kernel_for(kernel, self.in_features)
        q = qweight.to(torch.int8)
        # PyTorch's kernel reads (out, in) and bf16 scales; ours a tile layout and fp32 scales (the same values:
        # they are rounded to bf16 either way).
        layout = _layout(self.kernel)
        weight = {"lane16": self.lane_layout, "tile8": self.tile8_layout}.get(layout, Tensor.contiguous)(q)
        self.register_buffer("weight", weight)
        dtype = _KERNEL_DTYPE if self.kernel == "torch" else torch.float32
        self.register_buffer("scales", scales.to(_KERNEL_DTYPE).to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._op = None if self.kernel == "torch" else kernels.ops(self.kernel).i8_linear

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None = None, kernel: str | None = None) -> Int8Linear:
        w = weight.detach().float()
        # The kernel reads bf16 scales: round them (up, so no code overflows) before choosing the codes.
        scales = (w.abs().amax(dim=1) / 127.0 * (1 + 2**-8)).clamp_min(1e-12).to(_KERNEL_DTYPE).float()
        q = torch.round(w / scales[:, None]).clamp_(-128, 127)
        return cls(q, scales, bias, kernel)

    @staticmethod
    def lane_layout(q: Tensor) -> Tensor:
        """(out, in) int8 → ``enigma::i8_linear``'s (tiles, in / 2, 32): output rows in tiles of 16, byte 2j + e of
        chunk c holding weight (16t + j, 2c + e)."""
        n, k = q.shape
        tiles = -(-n // 16)
        padded = F.pad(q, (0, 0, 0, tiles * 16 - n))
        return padded.reshape(tiles, 16, k // 2, 2).permute(0, 2, 1, 3).reshape(tiles, k // 2, 32).contiguous()

    @staticmethod
    def tile8_layout(q: Tensor) -> Tensor:
        """(out, in) int8 → the tile8 kernels' (tiles, in / 4, 32): output rows in tiles of 8, byte 4j + e of
        chunk c holding weight (8t + j, 4c + e) (``engine/kernels/tile8.h``)."""
        n, k = q.shape
        tiles = -(-n // 8)
        padded = F.pad(q, (0, 0, 0, tiles * 8 - n))
        return padded.reshape(tiles, 8, k // 4, 4).permute(0, 2, 1, 3).reshape(tiles, k // 4, 32).contiguous()

    def codes(self) -> Tensor:
        """The int8 weight as (out, in), whatever the kernel's layout."""
        layout = _layout(self.kernel)
        if layout == "torch":
            return self.weight
        tiles, chunks, _ = self.weight.shape
        if layout == "lane16":
            rows = self.weight.reshape(tiles, chunks, 16, 2).permute(0, 2, 1, 3).reshape(tiles * 16, chunks * 2)
        else:
            rows = self.weight.reshape(tiles, chunks, 8, 4).permute(0, 2, 1, 3).reshape(tiles * 8, chunks * 4)
        return rows[: self.out_features]

    def dequantize(self) -> Tensor:
        return self.codes().float() * self.scales.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self._op is not None:
            y = self._op(x2, self.weight, self.scales)
        else:
            y = torch._weight_int8pack_mm(x2.to(_KERNEL_DTYPE), self.weight, self.scales)
        y = y.reshape(*lead, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel ({self.kernel})"


@dataclass
class AffineInt4:
    """4-bit codes with per-group affine dequantization ``w = code * scale + minimum`` (GGUF Q4_1's form).

    codes (out, in) uint8 in [0, 15]; scale, minimum (out, in // group_size). Q4_0 is the case
    ``minimum = -8 * scale``. Rows can be concatenated (``cat``) before packing, which is how fused
    projections are built from separately stored tensors.
    """

    codes: Tensor
    scale: Tensor
    minimum: Tensor
    group_size: int

    @classmethod
    def from_float(cls, weight: Tensor, group_size: int) -> AffineInt4:
        w = weight.detach().float()
        n, k = w.shape
        g = w.reshape(n, k // group_size, group_size)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15.0).clamp_min(1e-12)
        codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
        return cls(codes.reshape(n, k), scale, lo, group_size)

    @staticmethod
    def cat(parts: Sequence[AffineInt4]) -> AffineInt4:
        return AffineInt4(
            torch.cat([p.codes for p in parts]),
            torch.cat([p.scale for p in parts]),
            torch.cat([p.minimum for p in parts]),
            parts[0].group_size,
        )

    def q4_tiles(self) -> tuple[Tensor, Tensor, Tensor]:
        """The layout ``enigma::q4_linear`` reads (see ``engine/kernels/cpu_kernels.cpp``): output rows in tiles
        of 16, inputs in groups of 32 — codes (tiles, groups, 8, 32) uint8, scales (tiles, groups, 16) fp16 and
        offsets ``minimum - 128 * scale`` (tiles, groups, 16) fp32. Larger groups repeat their scale per 32."""
        n, k = self.codes.shape
        rep = self.group_size // _Q4_BLOCK
        tiles, groups = -(-n // 16), k // _Q4_BLOCK
        pad = tiles * 16 - n
        codes = F.pad(self.codes.to(torch.uint8), (0, 0, 0, pad))
        # [t, j, g, c, h, e] with row 16t + j and input 32g + 4c + 2h + e → byte 2j + e of chunk (t, g, c),
        # the low nibble for h = 0 and the high one for h = 1.
        c6 = codes.reshape(tiles, 16, groups, 8, 2, 2).permute(0, 2, 3, 1, 5, 4)
        packed = (c6[..., 0] | (c6[..., 1] << 4)).reshape(tiles, groups, 8, 32).contiguous()
        scale = F.pad(self.scale.float().repeat_interleave(rep, dim=1), (0, 0, 0, pad)).to(torch.float16)
        minimum = F.pad(self.minimum.float().repeat_interleave(rep, dim=1), (0, 0, 0, pad))
        offset = minimum - 128.0 * scale.float()
        return (
            packed,
            scale.reshape(tiles, 16, groups).transpose(1, 2).contiguous(),
            offset.reshape(tiles, 16, groups).transpose(1, 2).contiguous(),
        )

    def tile8(self) -> tuple[Tensor, Tensor, Tensor]:
        """The layout the tile8 kernels read (``engine/kernels/tile8.h``): output rows in tiles of 8, inputs in
        groups of 32 — codes (tiles, groups, 4, 32) uint8, scales (tiles, groups, 8) fp16 and mins (tiles,
        groups, 8) fp32. Larger groups repeat their scale and min per 32."""
        n, k = self.codes.shape
        rep = self.group_size // _Q4_BLOCK
        tiles, groups = -(-n // 8), k // _Q4_BLOCK
        pad = tiles * 8 - n
        codes = F.pad(self.codes.to(torch.uint8), (0, 0, 0, pad))
        # [t, j, g, c, h, e] with row 8t + j and input 32g + 8c + 4h + e → byte 4j + e of chunk (t, g, c), the
        # low nibble for h = 0 and the high one for h = 1.
        c6 = codes.reshape(tiles, 8, groups, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
        packed = (c6[..., 0] | (c6[..., 1] << 4)).reshape(tiles, groups, 4, 32).contiguous()
        scale = F.pad(self.scale.float().repeat_interleave(rep, dim=1), (0, 0, 0, pad)).to(torch.float16)
        minimum = F.pad(self.minimum.float().repeat_interleave(rep, dim=1), (0, 0, 0, pad))
        return (
            packed,
            scale.reshape(tiles, 8, groups).transpose(1, 2).contiguous(),
            minimum.reshape(tiles, 8, groups).transpose(1, 2).contiguous(),
        )

    def dequantize(self) -> Tensor:
        n, k = self.codes.shape
        g = self.codes.float().reshape(n, k // self.group_size, self.group_size)
        return (g * self.scale[..., None].float() + self.minimum[..., None].float()).reshape(n, k)


class Int4Linear(nn.Module):
    """``y = x @ wᵀ + b`` with ``w`` as 4-bit codes with a per-group scale and offset.

    Layouts, by kernel: the avx512 set reads the lane tiles of ``AffineInt4.q4_tiles`` (``offsets`` = min −
    128·scale), the tile8 sets (avx2, neon) ``AffineInt4.tile8`` (``offsets`` = the mins), both with a GGUF's fp16
    scales exactly; ``torch`` packs the codes into PyTorch's int4pack tiles with bf16 scale/zero pairs.
    """

    # Buffers, declared for the type checker (see Int8Linear); which of them exist depends on the kernel.
    weight: Tensor  # the packed codes in the kernel's layout
    scales: Tensor  # enigma kernels
    offsets: Tensor  # enigma kernels
    scales_and_zeros: Tensor  # PyTorch's kernel
    bias: Tensor | None

    def __init__(self, q: AffineInt4, bias: Tensor | None = None, kernel: str | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.codes.shape
        self.group_size = q.group_size
        if self.in_features % q.group_size or self.in_features % (16 * _INNER_K_TILES):
            raise UnsupportedQuantization(
                f"int4 needs in_features ({self.in_features}) divisible by the group size ({q.group_size}) and 32"
            )
        self.kernel = _kernel_for(kernel, self.in_features)
        self._op = None
        if self.kernel != "torch":
            codes, scales, offsets = q.q4_tiles() if _layout(self.kernel) == "lane16" else q.tile8()
            self.register_buffer("weight", codes)
            self.register_buffer("scales", scales)
            self.register_buffer("offsets", offsets)
            self._op = kernels.ops(self.kernel).q4_linear
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.codes.to(torch.int32), _INNER_K_TILES)
            zero = q.minimum.float() + 8.0 * q.scale.float()
            sz = torch.stack([q.scale.float(), zero], dim=-1).transpose(0, 1)  # (in // group, out, 2)
            self.register_buffer("weight", packed)
            self.register_buffer("scales_and_zeros", sz.to(_KERNEL_DTYPE).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(
        cls, weight: Tensor, group_size: int, bias: Tensor | None = None, kernel: str | None = None
    ) -> Int4Linear:
        return cls(AffineInt4.from_float(weight, group_size), bias, kernel)

    def dequantize(self) -> Tensor:
        """The float weight the kernel effectively uses (for error checks): the identity through the kernel."""
        eye = torch.eye(self.in_features, dtype=_KERNEL_DTYPE)
        return self._mm(eye).float().T.contiguous()

    def _mm(self, x2: Tensor) -> Tensor:
        if self._op is not None:
            return self._op(x2, self.weight, self.scales, self.offsets, self.out_features)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2.to(_KERNEL_DTYPE), self.weight, self.group_size, self.scales_and_zeros
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._mm(x.reshape(-1, self.in_features))
        y = y.reshape(*lead, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 group {self.group_size} ({self.kernel})"
        )


def _kernel_for(kernel: str | None, in_features: int) -> str:
    """The kernel set a layer uses: ``kernel`` when given (``enigma``: the machine's set), else the machine's set
    where it is loaded and the shape allows (``in_features`` divisible by 32), else ``torch``."""
    if kernel is None:
        isa = kernels.active()
        return isa if isa is not None and kernels.loaded(isa) and in_features % _Q4_BLOCK == 0 else "torch"
    if kernel not in KERNELS:
        raise UnsupportedQuantization(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "torch":
        return kernel
    isa = kernels.active() if kernel == "enigma" else kernel
    if isa is None or not kernels.loaded(isa):
        raise UnsupportedQuantization(f"the enigma kernels are not loaded: {kernels.reason(isa)}")
    if in_features % _Q4_BLOCK:
        raise UnsupportedQuantization(f"the enigma kernels need in_features divisible by 32, got {in_features}")
    return isa


def _layout(kernel: str) -> str:
    """The weight layout a layer's kernel reads: ``torch``, ``lane16`` (avx512) or ``tile8`` (avx2, neon)."""
    return "torch" if kernel == "torch" else kernels.layout(kernel)


# ---------------------------------------------------------------------------------------------------------------
def _int4_group(in_features: int, group_size: int) -> int:
    """The requested group, or the largest supported one that divides ``in_features`` (576 has no 128s)."""
    for g in sorted((g for g in INT4_GROUP_SIZES if g <= group_size), reverse=True):
        if in_features % g == 0:
            return g
    raise UnsupportedQuantization(f"no int4 group size <= {group_size} divides in_features {in_features}")


def quantize_model(
    model: Transformer, mode: str = "int4", group_size: int = 32, head: str | None = None, kernel: str | None = None
) -> Transformer:
    """Quantize every projection of ``model`` in place and return it.

    ``head`` is the mode of the output projection: by default int8 in both modes (with a 49k vocabulary the
    logits are sensitive and int8 costs little more than int4). The token embedding stays in float: a
    lookup reads one row per token.
    """
    if mode not in MODES:
        raise UnsupportedQuantization(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    if group_size not in INT4_GROUP_SIZES:
        raise UnsupportedQuantization(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    head = head or "int8"
    if head not in (*MODES, "float"):
        raise UnsupportedQuantization(f"unknown head mode {head!r}; choose int8, int4 or float")

    def make(m: str) -> Callable[[Tensor, Tensor | None], nn.Module]:
        def build(weight: Tensor, bias: Tensor | None) -> nn.Module:
            if m == "int8":
                return Int8Linear.from_float(weight, bias, kernel)
            return Int4Linear.from_float(weight, _int4_group(weight.shape[1], group_size), bias, kernel)

        return build

    with torch.no_grad():
        for block in model.blocks:
            for owner, name in PROJECTIONS:
                module = block.get_submodule(owner)
                lin = getattr(module, name)
                if isinstance(lin, nn.Linear):
                    setattr(module, name, make(mode)(lin.weight, lin.bias))
        if head != "float" and isinstance(model.output, nn.Linear):
            model.output = make(head)(model.output.weight, model.output.bias)
    return model


def logits_error(reference: Tensor, other: Tensor) -> dict[str, float]:
    """How far quantized logits are from the float ones: max abs diff, cosine, argmax agreement."""
    a, b = reference.float().reshape(-1, reference.shape[-1]), other.float().reshape(-1, other.shape[-1])
    return {
        "max_abs": float((a - b).abs().max()),
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()),
        "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


def prepare_for_inference(
    model: Transformer,
    mode: str = "auto",
    source: str | None = None,
    kernel: str = "auto",
    kernel_root: Path | None = None,
) -> dict[str, object]:
    """Pick the fastest kernels for a loaded model, in place; returns what was done (for logs and model cards).

    ``auto``: a GGUF ``source`` with Q4_0/Q4_1 projections loads them straight into int4 (``quant_gguf``),
    anything else is quantized to int4 group 32 (int8 head). ``int8``/``int4`` force that mode; ``float``
    keeps the weights. The model is inference-only afterwards.

    ``kernel``: ``auto`` builds/loads enigma's own CPU kernels (``engine.kernels``) where the CPU has them and
    uses PyTorch's elsewhere; ``enigma`` demands ours; ``torch`` keeps PyTorch's. ``kernel_root``: where ours
    are built and kept (``engine.kernels.build_dir``).
    """
    if mode not in ("auto", "float", *MODES):
        raise UnsupportedQuantization(f"unknown inference mode {mode!r}; choose auto, float, int8 or int4")
    if kernel not in ("auto", *KERNELS):
        raise UnsupportedQuantization(f"unknown kernel {kernel!r}; choose auto, enigma or torch")
    chosen = "torch"
    if kernel in kernels.ISAS:
        if not kernels.load(kernel, kernel_root):
            raise UnsupportedQuantization(f"the {kernel} kernels are unavailable: {kernels.reason(kernel)}")
        chosen = kernel
    elif kernel != "torch" and kernels.load(build_root=kernel_root):
        chosen = str(kernels.active())
    elif kernel == "enigma":
        raise UnsupportedQuantization(f"the enigma kernels are unavailable: {kernels.reason()}")
    # Which set runs, and with ours on AVX-512 whether batches run on AMX tiles: what decides batched speed.
    used: dict[str, Any] = {"kernel": chosen}
    if chosen == "avx512":
        used["amx"] = kernels.amx()
    # The weights are laid out for this set from here on; a cache set up afterwards attends with its kernel.
    model.kernels = None if chosen == "torch" else chosen
    # Per layer, None picks the machine's set where its shape allows (in_features divisible by 32), else
    # PyTorch's; a set forced by name (tests, benchmarks) is demanded of every layer.
    layer_kernel = None if chosen == kernels.active() else chosen
    if mode == "float":
        return {"mode": "float", **used}
    if mode == "auto" and source is not None and str(source).endswith(".gguf"):
        from engine.quant_gguf import quantize_from_gguf

        report = quantize_from_gguf(model, source, kernel=layer_kernel)
        return {"mode": "gguf", **used, **report}
    quantize_model(model, "int4" if mode == "auto" else mode, kernel=layer_kernel)
    return {"mode": "int4" if mode == "auto" else mode, "group_size": 32, "head": "int8", **used}
