// tile8.h for aarch64 with NEON. One source, two builds:
//
//   -march=armv8.2-a+dotprod (__ARM_FEATURE_DOTPROD; isa() "neon-dot": Cortex-A76 as in the Raspberry Pi 5,
//     Graviton 2 and later): SDOT multiplies 4 int8 pairs per 32-bit lane and adds them into that lane, which is
//     exactly one tile8 half-chunk (4 outputs x 4 inputs) against 4 activation bytes broadcast from one lane.
//   -march=armv8-a (isa() "neon": Cortex-A72 as in the Raspberry Pi 4): SMULL/SMLAL multiply 8 int8 pairs into
//     int16 lanes, and SADDLP/SADALP add neighbouring lanes into int32. The tile8 lanes then hold two partial
//     sums per output, folded with one pairwise add per group.
//
// Codes 0..15 fit signed int8, so the Q4 path multiplies codes and activations as signed bytes in both builds;
// nothing is offset and no correction term is needed.
//
// Each unpacked weight register is multiplied into up to kRows activation rows before the next chunk is loaded:
// a decode step of several rows then reads and unpacks the weights once, and extra rows cost only their
// multiply-adds. Tiles are the outer loop and row blocks the inner one, so a tile's weights (6 KB for Q4 at
// k = 1536) stay in L1 while every block of rows passes over them.
//
// Threads: the callers split [t0, t1) across threads; nothing here keeps state between calls.

#include "tile8.h"

#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace enigma_tile8 {
namespace {

constexpr int64_t kBlock = 32;  // inputs per activation block and per Q4 group
// Activation rows per pass over a tile. With dot products a row holds 2 float and 2 int32 accumulators and one
// activation register, so 4 rows leave room in NEON's 32 for a chunk's 4 unpacked weight registers. Without them
// a row's partial sums take 4 registers instead of 2 (int16 for Q4, int32 pairs for int8), plus 2 for its
// broadcast activation bytes, so 3 rows fit.
#ifdef __ARM_FEATURE_DOTPROD
constexpr int kRows = 4;
#else
constexpr int kRows = 3;
#endif

// The short loops over rows, heads and register arrays must be unrolled so the arrays live in registers; GCC
// at -O2 leaves them as loops over stack arrays otherwise.
#define ENIGMA_UNROLL _Pragma("GCC unroll 8")

// GCC's first scheduling pass hoists every weight load and unpack of a block ahead of the multiplies, which then
// need more than 32 registers and spill the accumulators to the stack on every block (99 stack accesses per
// block in the 3-row int8 kernel of the plain build; 24, mostly the prologue's, without that pass).
#if defined(__GNUC__) && !defined(__clang__)
#define ENIGMA_KERNEL __attribute__((noinline, optimize("no-schedule-insns")))
#else
#define ENIGMA_KERNEL __attribute__((noinline))
#endif

template <int N>
using ic = std::integral_constant<int, N>;

// Calls f with the row count (1..kRows) as a compile-time constant, so each count gets register-resident
// accumulators and a fully unrolled row loop.
template <class F>
inline void with_rows(int64_t mr, F&& f) {
  switch (mr) {
    case 1: return f(ic<1>{});
    case 2: return f(ic<2>{});
#if defined(__ARM_FEATURE_DOTPROD)
    case 3: return f(ic<3>{});
    default: return f(ic<4>{});
#else
    default: return f(ic<3>{});
#endif
  }
}

// Stores one tile's 8 outputs of a row, only those below n (a partial last tile).
inline void store_tile(float* y, int64_t o0, int64_t n, float32x4_t lo, float32x4_t hi) {
  if (o0 + 8 <= n) {
    vst1q_f32(y + o0, lo);
    vst1q_f32(y + o0 + 4, hi);
    return;
  }
  float tmp[8];
  vst1q_f32(tmp, lo);
  vst1q_f32(tmp + 4, hi);
  for (int64_t j = 0; o0 + j < n; ++j) y[o0 + j] = tmp[j];
}

#ifndef __ARM_FEATURE_DOTPROD
// The 4 activation bytes of lane L of a, repeated across the register: SMULL's partner for a half-chunk, whose
// bytes are 4 outputs x the same 4 inputs.
template <int L>
inline int8x16_t bcast4(int8x16_t a) {
  return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), L));
}

// Folds the pairwise int32 sums of outputs (0, 1) in a and (2, 3) in b into one lane per output.
inline int32x4_t fold(int32x4_t a, int32x4_t b) { return vpaddq_s32(a, b); }
#endif

// ---- Q4 ------------------------------------------------------------------------------------------------------
//
// A group is 4 chunks of 32 bytes; chunk c's first 16 bytes are outputs 0..3, its last 16 outputs 4..7, each
// output's 4 bytes holding inputs 8c+e (low nibble) and 8c+4+e (high nibble). The group's 32 activation bytes
// are two registers: inputs 8c..8c+3 are lane 2c % 4 of register c / 2, inputs 8c+4..8c+7 the next lane.
// Per group and output: y += scale * dx * sum(code * x8) + min * sx.

template <int MT>
ENIGMA_KERNEL void q4_tile(const uint8_t* codes, const uint16_t* scales, const float* mins, int64_t groups, int64_t t,
             const int8_t* x8, const float* dx, const float* sx, float* y, int64_t ldy, int64_t n) {
  const int64_t k = groups * kBlock;
  const uint8x16_t nib = vdupq_n_u8(0x0F);
  float32x4_t acc[MT][2];
  ENIGMA_UNROLL
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.f);
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* p = codes + (t * groups + g) * 128;
    // One half of each row's 32 activation bytes at a time: the other half would only add register pressure.
    int8x16_t xv[MT];
    auto load_x = [&](int half) {
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) xv[m] = vld1q_s8(x8 + m * k + g * kBlock + 16 * half);
    };
#ifdef __ARM_FEATURE_DOTPROD
    int32x4_t s[MT][2];
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) s[m][0] = s[m][1] = vdupq_n_s32(0);
    auto chunk = [&](auto cc) {
      constexpr int c = decltype(cc)::value, l = (2 * c) % 4;
      const uint8x16_t w0 = vld1q_u8(p + 32 * c), w1 = vld1q_u8(p + 32 * c + 16);
      const int8x16_t lo0 = vreinterpretq_s8_u8(vandq_u8(w0, nib)), hi0 = vreinterpretq_s8_u8(vshrq_n_u8(w0, 4));
      const int8x16_t lo1 = vreinterpretq_s8_u8(vandq_u8(w1, nib)), hi1 = vreinterpretq_s8_u8(vshrq_n_u8(w1, 4));
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) {
        s[m][0] = vdotq_laneq_s32(s[m][0], lo0, xv[m], l);
        s[m][0] = vdotq_laneq_s32(s[m][0], hi0, xv[m], l + 1);
        s[m][1] = vdotq_laneq_s32(s[m][1], lo1, xv[m], l);
        s[m][1] = vdotq_laneq_s32(s[m][1], hi1, xv[m], l + 1);
      }
    };
#else
    // int16 lanes hold one output's products of inputs e and e+4 of every chunk: 8 products of at most
    // 15 * 127, well inside int16, so the whole group accumulates before widening.
    int16x8_t h[MT][4];
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) h[m][0] = h[m][1] = h[m][2] = h[m][3] = vdupq_n_s16(0);
    auto chunk = [&](auto cc) {
      constexpr int c = decltype(cc)::value, l = (2 * c) % 4;
      const uint8x16_t w0 = vld1q_u8(p + 32 * c), w1 = vld1q_u8(p + 32 * c + 16);
      const int8x16_t lo0 = vreinterpretq_s8_u8(vandq_u8(w0, nib)), hi0 = vreinterpretq_s8_u8(vshrq_n_u8(w0, 4));
      const int8x16_t lo1 = vreinterpretq_s8_u8(vandq_u8(w1, nib)), hi1 = vreinterpretq_s8_u8(vshrq_n_u8(w1, 4));
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) {
        const int8x16_t xl = bcast4<l>(xv[m]), xh = bcast4<l + 1>(xv[m]);
        h[m][0] = vmlal_s8(h[m][0], vget_low_s8(lo0), vget_low_s8(xl));
        h[m][0] = vmlal_s8(h[m][0], vget_low_s8(hi0), vget_low_s8(xh));
        h[m][1] = vmlal_high_s8(h[m][1], lo0, xl);
        h[m][1] = vmlal_high_s8(h[m][1], hi0, xh);
        h[m][2] = vmlal_s8(h[m][2], vget_low_s8(lo1), vget_low_s8(xl));
        h[m][2] = vmlal_s8(h[m][2], vget_low_s8(hi1), vget_low_s8(xh));
        h[m][3] = vmlal_high_s8(h[m][3], lo1, xl);
        h[m][3] = vmlal_high_s8(h[m][3], hi1, xh);
      }
    };
#endif
    load_x(0);
    chunk(ic<0>{});
    chunk(ic<1>{});
    load_x(1);
    chunk(ic<2>{});
    chunk(ic<3>{});
    const int64_t at = (t * groups + g) * 8;
    const float32x4_t sc0 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(scales + at)));
    const float32x4_t sc1 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(scales + at + 4)));
    const float32x4_t mn0 = vld1q_f32(mins + at), mn1 = vld1q_f32(mins + at + 4);
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) {
#ifdef __ARM_FEATURE_DOTPROD
      const int32x4_t i0 = s[m][0], i1 = s[m][1];
#else
      const int32x4_t i0 = fold(vpaddlq_s16(h[m][0]), vpaddlq_s16(h[m][1]));
      const int32x4_t i1 = fold(vpaddlq_s16(h[m][2]), vpaddlq_s16(h[m][3]));
#endif
      const float d = dx[m * groups + g], sm = sx[m * groups + g];
      acc[m][0] = vfmaq_f32(acc[m][0], vcvtq_f32_s32(i0), vmulq_n_f32(sc0, d));
      acc[m][1] = vfmaq_f32(acc[m][1], vcvtq_f32_s32(i1), vmulq_n_f32(sc1, d));
      acc[m][0] = vfmaq_n_f32(acc[m][0], mn0, sm);
      acc[m][1] = vfmaq_n_f32(acc[m][1], mn1, sm);
    }
  }
  ENIGMA_UNROLL
  for (int m = 0; m < MT; ++m) store_tile(y + m * ldy, 8 * t, n, acc[m][0], acc[m][1]);
}

// ---- int8 ----------------------------------------------------------------------------------------------------
//
// Chunk c (32 bytes) is the 8 outputs x inputs 4c..4c+3; a block of 32 inputs is 8 chunks, whose activation
// bytes are lane c % 4 of register c / 4. Per block and output: y += dx * sum(w * x8); the per-output scale is
// applied once at the end.

template <int MT>
ENIGMA_KERNEL void i8_tile(const int8_t* w, const float* scales, int64_t k, int64_t t, const int8_t* x8, const float* dx,
             float* y, int64_t ldy, int64_t n) {
  const int64_t blocks = k / kBlock;
  float32x4_t acc[MT][2];
  ENIGMA_UNROLL
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.f);
  for (int64_t b = 0; b < blocks; ++b) {
    const int8_t* p = w + (t * k / 4 + b * 8) * 32;
    // One half of each row's 32 activation bytes at a time: the other half would only add register pressure.
    int8x16_t xv[MT];
    auto load_x = [&](int half) {
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) xv[m] = vld1q_s8(x8 + m * k + b * kBlock + 16 * half);
    };
#ifdef __ARM_FEATURE_DOTPROD
    int32x4_t s[MT][2];
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) s[m][0] = s[m][1] = vdupq_n_s32(0);
    auto chunk = [&](auto cc) {
      constexpr int c = decltype(cc)::value, l = c % 4;
      const int8x16_t w0 = vld1q_s8(p + 32 * c), w1 = vld1q_s8(p + 32 * c + 16);
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) {
        s[m][0] = vdotq_laneq_s32(s[m][0], w0, xv[m], l);
        s[m][1] = vdotq_laneq_s32(s[m][1], w1, xv[m], l);
      }
    };
    auto pair = [&](auto cc) {  // two chunks at a time, as the plain build does
      chunk(cc);
      chunk(ic<decltype(cc)::value + 1>{});
    };
#else
    // A product of two int8 (at most 128 * 127) leaves room for one more in int16, not two: each pair of chunks
    // is multiplied and added in int16, then widened into int32 with SADALP. The int32 lanes hold two partial
    // sums per output (inputs e = 0, 1 and e = 2, 3), folded at the end of the block.
    int32x4_t s[MT][4];
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) s[m][0] = s[m][1] = s[m][2] = s[m][3] = vdupq_n_s32(0);
    auto pair = [&](auto cc) {
      constexpr int c = decltype(cc)::value, l = c % 4;  // c even: chunks c and c + 1 share a register
      const int8x16_t a0 = vld1q_s8(p + 32 * c), a1 = vld1q_s8(p + 32 * c + 16);
      const int8x16_t b0 = vld1q_s8(p + 32 * c + 32), b1 = vld1q_s8(p + 32 * c + 48);
      ENIGMA_UNROLL
      for (int m = 0; m < MT; ++m) {
        const int8x16_t xa = bcast4<l>(xv[m]), xb = bcast4<l + 1>(xv[m]);
        s[m][0] = vpadalq_s16(s[m][0], vmlal_s8(vmull_s8(vget_low_s8(a0), vget_low_s8(xa)), vget_low_s8(b0),
                                                vget_low_s8(xb)));
        s[m][1] = vpadalq_s16(s[m][1], vmlal_high_s8(vmull_high_s8(a0, xa), b0, xb));
        s[m][2] = vpadalq_s16(s[m][2], vmlal_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(xa)), vget_low_s8(b1),
                                                vget_low_s8(xb)));
        s[m][3] = vpadalq_s16(s[m][3], vmlal_high_s8(vmull_high_s8(a1, xa), b1, xb));
      }
    };
#endif
    load_x(0);
    pair(ic<0>{});
    pair(ic<2>{});
    load_x(1);
    pair(ic<4>{});
    pair(ic<6>{});
    ENIGMA_UNROLL
    for (int m = 0; m < MT; ++m) {
#ifdef __ARM_FEATURE_DOTPROD
      const int32x4_t i0 = s[m][0], i1 = s[m][1];
#else
      const int32x4_t i0 = fold(s[m][0], s[m][1]), i1 = fold(s[m][2], s[m][3]);
#endif
      const float d = dx[m * blocks + b];
      acc[m][0] = vfmaq_n_f32(acc[m][0], vcvtq_f32_s32(i0), d);
      acc[m][1] = vfmaq_n_f32(acc[m][1], vcvtq_f32_s32(i1), d);
    }
  }
  const float32x4_t sc0 = vld1q_f32(scales + 8 * t), sc1 = vld1q_f32(scales + 8 * t + 4);
  ENIGMA_UNROLL
  for (int m = 0; m < MT; ++m)
    store_tile(y + m * ldy, 8 * t, n, vmulq_f32(acc[m][0], sc0), vmulq_f32(acc[m][1], sc1));
}

// ---- attention -----------------------------------------------------------------------------------------------

// e^x for x <= 0 (the scores minus their maximum): x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6
// polynomial (Cephes' expf coefficients, about 1 ulp), 2^n put into the exponent field. x is clamped to -87 so
// 2^n stays a normal number; e^-87 is 1.6e-38, nothing next to the maximum's 1.
inline float32x4_t exp_neg(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(-87.f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));  // ln2 in two parts: n * hi is exact
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(r, p, vmulq_f32(r, r));  // r + r^2 * p
  p = vaddq_f32(p, vdupq_n_f32(1.f));
  const int32x4_t e = vshlq_n_s32(vcvtq_s32_f32(n), 23);
  return vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), e));
}

// Up to 4 query heads at once: each key and value row is loaded once for all of them (GQA's saving).
template <int G>
ENIGMA_KERNEL void attend_heads(const float* q, const float* k, const float* v, int64_t len, int64_t d, float scale, float* out,
                  float* scratch, int64_t stride) {
  // Scores: one key row against every head, 16 dimensions per step in 4 independent accumulators.
  for (int64_t p = 0; p < len; ++p) {
    const float* kr = k + p * d;
    float32x4_t a[G][4];
    ENIGMA_UNROLL
    for (int i = 0; i < G; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = vdupq_n_f32(0.f);
    for (int64_t c = 0; c < d; c += 16) {
      const float32x4_t k0 = vld1q_f32(kr + c), k1 = vld1q_f32(kr + c + 4), k2 = vld1q_f32(kr + c + 8),
                        k3 = vld1q_f32(kr + c + 12);
      ENIGMA_UNROLL
      for (int i = 0; i < G; ++i) {
        const float* qr = q + i * d + c;
        a[i][0] = vfmaq_f32(a[i][0], k0, vld1q_f32(qr));
        a[i][1] = vfmaq_f32(a[i][1], k1, vld1q_f32(qr + 4));
        a[i][2] = vfmaq_f32(a[i][2], k2, vld1q_f32(qr + 8));
        a[i][3] = vfmaq_f32(a[i][3], k3, vld1q_f32(qr + 12));
      }
    }
    ENIGMA_UNROLL
    for (int i = 0; i < G; ++i)
      scratch[i * stride + p] = scale * vaddvq_f32(vaddq_f32(vaddq_f32(a[i][0], a[i][1]), vaddq_f32(a[i][2], a[i][3])));
  }
  // Softmax weights, left unnormalized; the output is divided by their sum once.
  float inv[G];
  ENIGMA_UNROLL
  for (int i = 0; i < G; ++i) {
    float* s = scratch + i * stride;
    const int64_t len4 = len & ~int64_t{3};
    float32x4_t mx = vdupq_n_f32(s[0]);
    for (int64_t p = 0; p < len4; p += 4) mx = vmaxq_f32(mx, vld1q_f32(s + p));
    float m = vmaxvq_f32(mx);
    for (int64_t p = len4; p < len; ++p) m = std::max(m, s[p]);
    float32x4_t sum = vdupq_n_f32(0.f);
    for (int64_t p = 0; p < len4; p += 4) {
      const float32x4_t e = exp_neg(vsubq_f32(vld1q_f32(s + p), vdupq_n_f32(m)));
      vst1q_f32(s + p, e);
      sum = vaddq_f32(sum, e);
    }
    float total = vaddvq_f32(sum);
    if (len4 < len) {  // the last 1..3 scores through the same function; the padding lanes are discarded
      float tail[4] = {m, m, m, m};
      std::memcpy(tail, s + len4, static_cast<size_t>(len - len4) * sizeof(float));
      vst1q_f32(tail, exp_neg(vsubq_f32(vld1q_f32(tail), vdupq_n_f32(m))));
      for (int64_t p = len4; p < len; ++p) {
        s[p] = tail[p - len4];
        total += s[p];
      }
    }
    inv[i] = 1.f / total;  // at least 1: the maximum's own weight
  }
  // Weighted values: 16 dimensions of every head at a time, so the accumulators stay in registers while the
  // value rows stream by.
  for (int64_t c = 0; c < d; c += 16) {
    float32x4_t a[G][4];
    ENIGMA_UNROLL
    for (int i = 0; i < G; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = vdupq_n_f32(0.f);
    for (int64_t p = 0; p < len; ++p) {
      const float* vr = v + p * d + c;
      const float32x4_t v0 = vld1q_f32(vr), v1 = vld1q_f32(vr + 4), v2 = vld1q_f32(vr + 8), v3 = vld1q_f32(vr + 12);
      ENIGMA_UNROLL
      for (int i = 0; i < G; ++i) {
        const float wp = scratch[i * stride + p];
        a[i][0] = vfmaq_n_f32(a[i][0], v0, wp);
        a[i][1] = vfmaq_n_f32(a[i][1], v1, wp);
        a[i][2] = vfmaq_n_f32(a[i][2], v2, wp);
        a[i][3] = vfmaq_n_f32(a[i][3], v3, wp);
      }
    }
    ENIGMA_UNROLL
    for (int i = 0; i < G; ++i) {
      float* o = out + i * d + c;
      vst1q_f32(o, vmulq_n_f32(a[i][0], inv[i]));
      vst1q_f32(o + 4, vmulq_n_f32(a[i][1], inv[i]));
      vst1q_f32(o + 8, vmulq_n_f32(a[i][2], inv[i]));
      vst1q_f32(o + 12, vmulq_n_f32(a[i][3], inv[i]));
    }
  }
}

}  // namespace

const char* isa() {
#ifdef __ARM_FEATURE_DOTPROD
  return "neon-dot";
#else
  return "neon";
#endif
}

void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* x8, float* dx, float* sx) {
  const int64_t blocks = k / kBlock;
  const int32x4_t lim = vdupq_n_s32(127), nlim = vdupq_n_s32(-127);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* p = x + r * k + b * kBlock;
      float32x4_t v[8];
      ENIGMA_UNROLL
      for (int i = 0; i < 8; ++i) v[i] = vld1q_f32(p + 4 * i);
      float32x4_t mx = vabsq_f32(v[0]);
      ENIGMA_UNROLL
      for (int i = 1; i < 8; ++i) mx = vmaxq_f32(mx, vabsq_f32(v[i]));
      const float d = vmaxvq_f32(mx) / 127.f;
      dx[r * blocks + b] = d;
      int8_t* q = x8 + r * k + b * kBlock;
      if (d == 0.f) {  // zeros, or so small that the scale underflows
        std::memset(q, 0, kBlock);
        sx[r * blocks + b] = 0.f;
        continue;
      }
      // x / d rounded to nearest, ties to even (FCVTNS), as torch.round(x / d): a division rather than a
      // multiplication by 1 / d, so that values on a half round as the reference's do. The clamp only matters
      // where d is subnormal and the quotient inexact.
      const float32x4_t dv = vdupq_n_f32(d);
      int32x4_t i32[8];
      ENIGMA_UNROLL
      for (int i = 0; i < 8; ++i) i32[i] = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vdivq_f32(v[i], dv)), lim), nlim);
      // The quantized block's sum (tile8.h: the Q4 min term needs the sum of what the dot products saw).
      int32x4_t total = i32[0];
      ENIGMA_UNROLL
      for (int i = 1; i < 8; ++i) total = vaddq_s32(total, i32[i]);
      sx[r * blocks + b] = d * static_cast<float>(vaddvq_s32(total));
      int8x8_t i8[4];
      ENIGMA_UNROLL
      for (int i = 0; i < 4; ++i) i8[i] = vmovn_s16(vcombine_s16(vmovn_s32(i32[2 * i]), vmovn_s32(i32[2 * i + 1])));
      vst1q_s8(q, vcombine_s8(i8[0], i8[1]));
      vst1q_s8(q + 16, vcombine_s8(i8[2], i8[3]));
    }
}

void q4_tiles(const uint8_t* codes, const uint16_t* scales, const float* mins, int64_t groups, int64_t t0,
              int64_t t1, const int8_t* x8, const float* dx, const float* sx, int64_t rows, float* y, int64_t ldy,
              int64_t n) {
  const int64_t k = groups * kBlock;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < rows; m0 += kRows)
      with_rows(std::min<int64_t>(kRows, rows - m0), [&](auto mt) {
        q4_tile<decltype(mt)::value>(codes, scales, mins, groups, t, x8 + m0 * k, dx + m0 * groups,
                                     sx + m0 * groups, y + m0 * ldy, ldy, n);
      });
}

void i8_tiles(const int8_t* w, const float* scales, int64_t k, int64_t t0, int64_t t1, const int8_t* x8,
              const float* dx, int64_t rows, float* y, int64_t ldy, int64_t n) {
  const int64_t blocks = k / kBlock;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < rows; m0 += kRows)
      with_rows(std::min<int64_t>(kRows, rows - m0), [&](auto mt) {
        i8_tile<decltype(mt)::value>(w, scales, k, t, x8 + m0 * k, dx + m0 * blocks, y + m0 * ldy, ldy, n);
      });
}

void attend(const float* q, const float* k, const float* v, int64_t g, int64_t len, int64_t d, float scale,
            float* out, float* scratch) {
  const int64_t stride = (len + 15) / 16 * 16;
  for (int64_t i = 0; i < g; i += 4) {
    const float* qi = q + i * d;
    float* oi = out + i * d;
    float* si = scratch + i * stride;
    switch (std::min<int64_t>(4, g - i)) {
      case 1: attend_heads<1>(qi, k, v, len, d, scale, oi, si, stride); break;
      case 2: attend_heads<2>(qi, k, v, len, d, scale, oi, si, stride); break;
      case 3: attend_heads<3>(qi, k, v, len, d, scale, oi, si, stride); break;
      default: attend_heads<4>(qi, k, v, len, d, scale, oi, si, stride); break;
    }
  }
}

}  // namespace enigma_tile8
