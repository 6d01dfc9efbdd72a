// The portable kernel interface: Q4/int8 matmuls over int8-quantized activations and fp32 decode attention,
// implemented once per instruction set (avx2.cpp: x86-64 with AVX2 + FMA + F16C; neon.cpp: aarch64, with the
// dot-product instructions where the build enables them). Nothing here depends on PyTorch: tile8_ops.cpp wraps
// these functions as torch ops, and tile8_check.cpp drives them standalone, which is how the aarch64 build is
// checked under qemu-user on an x86 machine.
//
// Why int8 activations: without AVX-512 BF16 there is no cheap bf16 dot product, but every CPU we target has an
// 8-bit integer multiply-add (x86 VPMADDUBSW, ARM SDOT/SMULL). Each row is quantized once per call in blocks of
// 32 (one scale per block, as llama.cpp's Q8_1), then every weight byte is multiplied into all rows as integers;
// a block's integer sum is scaled back to float once.
//
// Layout "tile8": output channels in tiles of 8 (one per 32-bit lane of an AVX2 register, or of two NEON
// registers), each lane holding 4 consecutive inputs.
//
//   Q4, codes (tiles, groups, 4, 32) uint8 with groups = k / 32: byte 4j + e of chunk c of (t, g) holds, for
//     output 8t + j, the code of input 32g + 8c + e in its low nibble and of input 32g + 8c + 4 + e in its high
//     nibble. scales (tiles, groups, 8) as IEEE fp16 bits, mins (tiles, groups, 8) fp32; the weight is
//     w = scale * code + min (GGUF Q4_1's form). Padding outputs (n..8*tiles) have code, scale and min 0.
//   int8, w (tiles, k / 4, 32) int8: byte 4j + e of chunk c holds weight (8t + j, 4c + e); one fp32 scale per
//     output, scales (8 * tiles,), padding 0.
//   Activations: x8 (rows, k) int8 in [-127, 127], dx (rows, k / 32) the block scales, sx (rows, k / 32) each
//     block's sum of its quantized values, dx * sum x8, for the Q4 min term: sum w x = scale * dx * sum code * x8
//     + min * sx. The quantized sum, not the exact one, is what keeps the error small: the rounding errors e of
//     x then enter as sum (scale * code + min) e = sum w e, with w centred, where the exact sum would leave
//     sum scale * code * e, whose codes are all positive (2.5x the error on random Q4 weights, measured).
#pragma once

#include <cstdint>

namespace enigma_tile8 {

// Which instruction set this build implements: "avx2", "neon" or "neon-dot".
const char* isa();

// x (rows, k) fp32 → x8, dx, sx as above (x8 rounded to nearest); k a multiple of 32. A block of zeros has scale 0.
void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* x8, float* dx, float* sx);

// y[m * ldy + 8t + j] for every row m < rows and tile t in [t0, t1), writing only outputs < n.
void q4_tiles(const uint8_t* codes, const uint16_t* scales, const float* mins, int64_t groups, int64_t t0,
              int64_t t1, const int8_t* x8, const float* dx, const float* sx, int64_t rows, float* y, int64_t ldy,
              int64_t n);

// The same for the int8 layout; k = 4 * chunks, a multiple of 32.
void i8_tiles(const int8_t* w, const float* scales, int64_t k, int64_t t0, int64_t t1, const int8_t* x8,
              const float* dx, int64_t rows, float* y, int64_t ldy, int64_t n);

// Softmax attention of g query heads (q: g x d, contiguous) against len cached positions of one key/value head
// (k, v: len x d rows, contiguous): out (g x d). d is a multiple of 16 (64 and 128 in practice); scratch holds at
// least g * ((len + 15) / 16 * 16) floats.
void attend(const float* q, const float* k, const float* v, int64_t g, int64_t len, int64_t d, float scale,
            float* out, float* scratch);

}  // namespace enigma_tile8
