// Batched low-bit matmuls and decode attention for x86 CPUs with AVX-512 BF16.
//
// Why these exist: PyTorch's CPU int4/int8 weight-only kernels dequantize every weight once per activation
// row, so a decode step of 8 rows costs about 3x one row and continuous batching gains little. Here weights
// are turned into bf16 once in registers and multiplied into every activation row with VDPBF16PS (32
// multiply-adds into fp32 accumulators per instruction), so extra rows cost only their dot products. The Q4
// kernel also makes the one-row case cheaper than PyTorch's: see its layout below. On CPUs with AMX (Sapphire
// Rapids and later), two rows and more go to amx.cpp instead, which uses the same layouts as tiles.
//
// Decode attention: one new token per row against that row's cached keys/values, with GQA groups sharing
// each key/value load. It replaces a pair of small batched matmuls whose per-call overhead dominated.
//
// Everything runs on PyTorch's intra-op thread pool (at::parallel_for), so it shares the OpenMP team of
// the thread that calls it, as PyTorch's own kernels do.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include "amx.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;       // weights per quantization block
constexpr int kMaxRows = 8;          // activation rows held in registers at once
constexpr int64_t kAmxMinRows = 2;   // from two activation rows on, AMX tiles beat vector dot products (amx.cpp)

// Runs an AMX body over output tiles split in pairs across the intra-op threads: body(first tile, end tile).
template <class Body>
void for_each_tile_pair(int64_t tiles, const Body& body) {
  at::parallel_for(0, (tiles + 1) / 2, 1,
                   [&](int64_t p0, int64_t p1) { body(2 * p0, std::min(2 * p1, tiles)); });
}

at::Tensor as_bf16_rows(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "x must be (rows, ", k, "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  return x.to(at::kBFloat16).contiguous();
}

// ---- Q4: output channels across vector lanes ---------------------------------------------------------------
//
// Layout (engine.quant.AffineInt4.q4_tiles): output rows in tiles of 16 (one per vector lane), input in groups
// of 32. Per (tile, group): 8 chunks of 32 bytes, byte 2j+e of chunk c holding, for lane j, the codes of
// inputs 4c+e (low nibble) and 4c+2+e (high nibble); a scale vector (16 fp16) and an offset vector (16 fp32).
// A code becomes a bf16 with one bit operation: 0x4300 | q is exactly 128 + q. With inputs paired as
// VDPBF16PS wants them, each instruction multiplies 16 lanes x 2 inputs, and the group's sum is turned into the
// real weight w = d*q + m at the end: sum_k w_k x_k = d * sum_k (128 + q_k) x_k + (m - 128 d) * sum_k x_k.
// Dequantizing 32 weights so costs two vector operations instead of eleven, which is what decides the speed
// at one activation row; with more rows, each chunk is expanded once and multiplied into every row.

inline __m512bh bcast_pair(const c10::BFloat16* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}

template <int MT, int NT>
inline void q4_unit(const uint8_t* codes, const c10::Half* dsc, const float* off, int64_t groups, int64_t tile0,
                    const c10::BFloat16* x, int64_t ldx, const float* xs, float* y, int64_t ldy, int64_t n) {
  constexpr bool kSplit = MT == 1;  // one row: two partial sums per lane hide the dot-product latency
  const __m512i nib = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
  __m512 acc[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 ga[MT][NT], gb[kSplit ? MT : 1][kSplit ? NT : 1];
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < NT; ++j) ga[m][j] = _mm512_setzero_ps();
    if constexpr (kSplit)
      for (int j = 0; j < NT; ++j) gb[0][j] = _mm512_setzero_ps();
    for (int c = 0; c < 8; ++c) {
      __m512bh wa[NT], wb[NT];
      for (int j = 0; j < NT; ++j) {
        const uint8_t* p = codes + (((tile0 + j) * groups + g) * 8 + c) * 32;
        const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        wa[j] = (__m512bh)_mm512_ternarylogic_epi32(w16, nib, magic, 0xEA);  // (w & 15) | 0x4300
        wb[j] = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(w16, 4), nib, magic, 0xEA);
      }
      for (int m = 0; m < MT; ++m) {
        const c10::BFloat16* xr = x + m * ldx + g * kBlock + 4 * c;
        const __m512bh xa = bcast_pair(xr), xb = bcast_pair(xr + 2);
        for (int j = 0; j < NT; ++j) {
          ga[m][j] = _mm512_dpbf16_ps(ga[m][j], wa[j], xa);
          if constexpr (kSplit)
            gb[m][j] = _mm512_dpbf16_ps(gb[m][j], wb[j], xb);
          else
            ga[m][j] = _mm512_dpbf16_ps(ga[m][j], wb[j], xb);
        }
      }
    }
    for (int j = 0; j < NT; ++j) {
      const int64_t at = ((tile0 + j) * groups + g) * 16;
      const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dsc + at)));
      const __m512 ov = _mm512_loadu_ps(off + at);
      for (int m = 0; m < MT; ++m) {
        __m512 sum = ga[m][j];
        if constexpr (kSplit) sum = _mm512_add_ps(sum, gb[m][j]);
        acc[m][j] = _mm512_fmadd_ps(sum, dv, acc[m][j]);
        acc[m][j] = _mm512_fmadd_ps(_mm512_set1_ps(xs[m * groups + g]), ov, acc[m][j]);
      }
    }
  }
  for (int j = 0; j < NT; ++j) {
    const int64_t n0 = (tile0 + j) * 16;
    const __mmask16 keep = n0 + 16 <= n ? __mmask16(0xFFFF) : __mmask16((1u << (n - n0)) - 1);
    for (int m = 0; m < MT; ++m) _mm512_mask_storeu_ps(y + m * ldy + n0, keep, acc[m][j]);
  }
}

// Calls f with the row count as a compile-time constant (1..kMaxRows), so each count gets its own
// register-resident accumulators.
template <class F>
inline void with_rows(int64_t mt, F&& f) {
  switch (mt) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// Calls f(tile count as a constant, first tile offset) for ``cols`` tiles: once for 4 or 2, else once per tile.
template <class F>
inline void with_cols(int64_t cols, F&& f) {
  if (cols == 4) return f(std::integral_constant<int, 4>{}, 0);
  if (cols == 2) return f(std::integral_constant<int, 2>{}, 0);
  for (int64_t j = 0; j < cols; ++j) f(std::integral_constant<int, 1>{}, j);
}

// Splits the output tiles into units of ``nt`` across the intra-op threads and walks each unit's activation
// rows in chunks of kMaxRows: body(first tile, tiles in the unit, first row, rows in the chunk).
template <class Body>
void for_each_unit(int64_t tiles, int64_t mrows, int64_t nt, const Body& body) {
  at::parallel_for(0, (tiles + nt - 1) / nt, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u)
      for (int64_t m0 = 0; m0 < mrows; m0 += kMaxRows)
        body(u * nt, std::min(nt, tiles - u * nt), m0, std::min<int64_t>(kMaxRows, mrows - m0));
  });
}

at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     const at::Tensor& offsets, int64_t n) {
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 4 && codes.size(2) == 8 && codes.size(3) == 32 &&
                  codes.is_contiguous(),
              "codes must be contiguous uint8 (tiles, groups, 8, 32)");
  const int64_t tiles = codes.size(0), groups = codes.size(1), k = groups * kBlock;
  TORCH_CHECK(n > 0 && (n + 15) / 16 == tiles, "out_features ", n, " does not fit ", tiles, " tiles of 16");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.sizes() == at::IntArrayRef({tiles, groups, 16}),
              "scales must be contiguous float16 (tiles, groups, 16)");
  TORCH_CHECK(offsets.scalar_type() == at::kFloat && offsets.is_contiguous() &&
                  offsets.sizes() == at::IntArrayRef({tiles, groups, 16}),
              "offsets must be contiguous float32 (tiles, groups, 16)");
  const at::Tensor xb = as_bf16_rows(x, k);
  const int64_t mrows = xb.size(0);
  const auto* xp = xb.data_ptr<c10::BFloat16>();
  // Each group's sum of the (bf16-rounded) inputs, for the offset term.
  std::vector<float> xs(static_cast<size_t>(mrows * groups));
  for (int64_t m = 0; m < mrows; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const __m512i raw = _mm512_loadu_si512(xp + m * k + g * kBlock);
      const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
      const __m512 hi =
          _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
      xs[m * groups + g] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
    }
  at::Tensor y = at::empty({mrows, n}, x.options().dtype(at::kFloat));
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const auto* dp = scales.data_ptr<c10::Half>();
  const float* op = offsets.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (mrows >= kAmxMinRows && enigma_amx::enabled()) {
    for_each_tile_pair(tiles, [&](int64_t t0, int64_t t1) {
      enigma_amx::q4_tiles(cp, dp, op, groups, t0, t1, xp, mrows, xs.data(), yp, n);
    });
    return y;
  }
  const int64_t mt = std::min<int64_t>(mrows, kMaxRows);
  const int64_t nt = mt == 1 ? (tiles >= 64 ? 4 : 2) : mt == 2 ? 4 : mt <= 4 ? 2 : 1;
  for_each_unit(tiles, mrows, nt, [&](int64_t tile0, int64_t cols, int64_t m0, int64_t rows) {
    with_cols(cols, [&](auto nc, int64_t j) {
      with_rows(rows, [&](auto nr) {
        q4_unit<decltype(nr)::value, decltype(nc)::value>(cp, dp, op, groups, tile0 + j, xp + m0 * k, k,
                                                            xs.data() + m0 * groups, yp + m0 * n, n, n);
      });
    });
  });
  return y;
}

// ---- int8 (the output head): the same lanes-as-output-channels scheme, without the 4-bit trick ----------------
//
// Layout (engine.quant.Int8Linear.lane_layout): (tiles, in / 2, 32) int8, byte 2j+e of chunk c holding weight
// (16t + j, 2c + e). An int8 is exact in bf16 (8 significant bits); the row's scale multiplies the finished sums.

template <int MT, int NT>
inline void i8_unit(const int8_t* w, int64_t chunks, int64_t tile0, const c10::BFloat16* x, int64_t ldx,
                    const float* scales, float* y, int64_t ldy, int64_t n) {
  constexpr int kAcc = MT == 1 ? 2 : 1;  // one row: alternate two sums per lane to hide the dot-product latency
  __m512 acc[kAcc][MT][NT];
  for (int a = 0; a < kAcc; ++a)
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < NT; ++j) acc[a][m][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; c += 2) {
    for (int h = 0; h < 2; ++h) {
      __m512bh wv[NT];
      for (int j = 0; j < NT; ++j) {
        const int8_t* p = w + ((tile0 + j) * chunks + c + h) * 32;
        const __m512 lo =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        const __m512 hi =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
        wv[j] = _mm512_cvtne2ps_pbh(hi, lo);
      }
      for (int m = 0; m < MT; ++m) {
        const __m512bh xv = bcast_pair(x + m * ldx + 2 * (c + h));
        for (int j = 0; j < NT; ++j) {
          __m512& a = acc[kAcc == 2 ? h : 0][m][j];
          a = _mm512_dpbf16_ps(a, wv[j], xv);
        }
      }
    }
  }
  for (int j = 0; j < NT; ++j) {
    const int64_t n0 = (tile0 + j) * 16;
    const __mmask16 keep = n0 + 16 <= n ? __mmask16(0xFFFF) : __mmask16((1u << (n - n0)) - 1);
    const __m512 sv = _mm512_maskz_loadu_ps(keep, scales + n0);
    for (int m = 0; m < MT; ++m) {
      __m512 sum = acc[0][m][j];
      if constexpr (kAcc == 2) sum = _mm512_add_ps(sum, acc[1][m][j]);
      _mm512_mask_storeu_ps(y + m * ldy + n0, keep, _mm512_mul_ps(sum, sv));
    }
  }
}

at::Tensor i8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 3 && w.size(2) == 32 && w.is_contiguous(),
              "w must be contiguous int8 (tiles, in / 2, 32)");
  const int64_t tiles = w.size(0), chunks = w.size(1), k = 2 * chunks, n = scales.numel();
  TORCH_CHECK(k % kBlock == 0, "in_features must be a multiple of 32, got ", k);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.is_contiguous() && n > 0 &&
                  (n + 15) / 16 == tiles,
              "scales must be contiguous float32 (out,) for ", tiles, " tiles of 16");
  const at::Tensor xb = as_bf16_rows(x, k);
  const int64_t mrows = xb.size(0);
  at::Tensor y = at::empty({mrows, n}, x.options().dtype(at::kFloat));
  const auto* xp = xb.data_ptr<c10::BFloat16>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (mrows >= kAmxMinRows && enigma_amx::enabled()) {
    for_each_tile_pair(tiles, [&](int64_t t0, int64_t t1) { enigma_amx::i8_tiles(wp, sp, k, t0, t1, xp, mrows, yp, n); });
    return y;
  }
  const int64_t mt = std::min<int64_t>(mrows, kMaxRows);
  const int64_t nt = mt <= 2 ? 4 : mt <= 4 ? 2 : 1;
  for_each_unit(tiles, mrows, nt, [&](int64_t tile0, int64_t cols, int64_t m0, int64_t rows) {
    with_cols(cols, [&](auto nc, int64_t j) {
      with_rows(rows, [&](auto nr) {
        i8_unit<decltype(nr)::value, decltype(nc)::value>(wp, chunks, tile0 + j, xp + m0 * k, k, sp, yp + m0 * n, n,
                                                            n);
      });
    });
  });
  return y;
}

// ---- decode attention ---------------------------------------------------------------------------------------

// exp for x <= 0 (softmax after subtracting the max): x = n ln2 + r, |r| <= ln2 / 2, a degree-6 Taylor
// polynomial for e^r (relative error below 1e-7) scaled by 2^n.
inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// The 16 horizontal sums of v[0..15] as one vector (lane i = sum of v[i]): a shuffle tree of 45 operations
// instead of 16 separate reductions of about 8 each.
inline __m512 hsum16(__m512 v[16]) {
  __m512 r1[8], r2[4], r3[2];
  for (int i = 0; i < 8; ++i)
    r1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)
    r2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r1[2 * i], r1[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(r1[2 * i], r1[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)
    r3[i] = _mm512_add_ps(_mm512_shuffle_ps(r2[2 * i], r2[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(r2[2 * i], r2[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(r3[0], r3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(r3[0], r3[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Lane 4j + t of s holds the sum of v[j + 4t].
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(idx, s);
}

// Scores of one query head against positions [0, len) of one key head, scaled: s (len rounded up to 16).
template <int DV>
inline void scores_of(const float* qv, const float* kb, int64_t len, float scale, float* s) {
  __m512 q[DV];
  for (int i = 0; i < DV; ++i) q[i] = _mm512_mul_ps(_mm512_loadu_ps(qv + i * 16), _mm512_set1_ps(scale));
  constexpr int64_t d = DV * 16;
  int64_t l0 = 0;
  for (; l0 + 16 <= len; l0 += 16) {
    __m512 v[16];
    for (int p = 0; p < 16; ++p) {
      const float* kr = kb + (l0 + p) * d;
      __m512 acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(kr));
      for (int i = 1; i < DV; ++i) acc = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(kr + i * 16), acc);
      v[p] = acc;
    }
    _mm512_storeu_ps(s + l0, hsum16(v));
  }
  for (; l0 < len; ++l0) {
    const float* kr = kb + l0 * d;
    __m512 acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(kr));
    for (int i = 1; i < DV; ++i) acc = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(kr + i * 16), acc);
    s[l0] = _mm512_reduce_add_ps(acc);
  }
}

// softmax numerators in place (exp(s - max)) over [0, len); returns 1 / their sum.
inline float softmax_in_place(float* s, int64_t len) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  int64_t l = 0;
  for (; l + 16 <= len; l += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + l));
  float m = _mm512_reduce_max_ps(mx);
  for (int64_t t = l; t < len; ++t) m = std::max(m, s[t]);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (l = 0; l < len; l += 16) {
    const __mmask16 keep = l + 16 <= len ? __mmask16(0xFFFF) : __mmask16((1u << (len - l)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(keep, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(keep, s + l), mv)));
    _mm512_mask_storeu_ps(s + l, keep, e);
    sum = _mm512_add_ps(sum, e);
  }
  return 1.0f / _mm512_reduce_add_ps(sum);
}

// One (row, kv head) task: G query heads share every value-row load.
template <int DV>
void attend(const float* qp, const float* kb, const float* vb, int64_t g, int64_t len, float scale, float* out,
            std::vector<float>& scores) {
  constexpr int64_t d = DV * 16;
  const int64_t stride = (len + 15) / 16 * 16;
  scores.resize(static_cast<size_t>(g * stride));
  std::vector<float> inv(static_cast<size_t>(g));
  for (int64_t h = 0; h < g; ++h) {
    scores_of<DV>(qp + h * d, kb, len, scale, scores.data() + h * stride);
    inv[h] = softmax_in_place(scores.data() + h * stride, len);
  }
  for (int64_t h0 = 0; h0 < g; h0 += 4) {  // up to 4 heads at a time keep 4 * DV accumulators in registers
    const int64_t hn = std::min<int64_t>(4, g - h0);
    __m512 acc[4][DV];
    for (int h = 0; h < 4; ++h)
      for (int i = 0; i < DV; ++i) acc[h][i] = _mm512_setzero_ps();
    for (int64_t l = 0; l < len; ++l) {
      __m512 vrow[DV];
      for (int i = 0; i < DV; ++i) vrow[i] = _mm512_loadu_ps(vb + l * d + i * 16);
      for (int h = 0; h < hn; ++h) {
        const __m512 p = _mm512_set1_ps(scores[(h0 + h) * stride + l]);
        for (int i = 0; i < DV; ++i) acc[h][i] = _mm512_fmadd_ps(p, vrow[i], acc[h][i]);
      }
    }
    for (int h = 0; h < hn; ++h) {
      const __m512 iv = _mm512_set1_ps(inv[h0 + h]);
      for (int i = 0; i < DV; ++i) _mm512_storeu_ps(out + (h0 + h) * d + i * 16, _mm512_mul_ps(acc[h][i], iv));
    }
  }
}

// Attention of one new token per row: q (B, H, D) against rows [slot, slot + B) of the caches (R, Hkv, S, D),
// row b attending to positions 0..pos[b]. Returns (B, H, D). Each (row, kv head) pair is one task.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, int64_t slot,
                            const at::Tensor& pos, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && kc.scalar_type() == at::kFloat && vc.scalar_type() == at::kFloat,
              "decode_attention works on float32");
  TORCH_CHECK(q.dim() == 3 && kc.dim() == 4 && vc.sizes() == kc.sizes(), "q (B, H, D), caches (R, Hkv, S, D)");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "caches must be contiguous");
  const int64_t bsz = q.size(0), h = q.size(1), d = q.size(2), hkv = kc.size(1), seq = kc.size(2);
  TORCH_CHECK(kc.size(3) == d && (d == 64 || d == 128), "head dim must match the cache's and be 64 or 128, got ", d);
  TORCH_CHECK(h % hkv == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(slot >= 0 && slot + bsz <= kc.size(0), "rows out of the cache");
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.numel() == bsz, "pos must be int64 (B,)");
  const at::Tensor qc = q.contiguous();
  const at::Tensor pc = pos.contiguous();
  const int64_t* p = pc.data_ptr<int64_t>();
  for (int64_t b = 0; b < bsz; ++b) TORCH_CHECK(p[b] >= 0 && p[b] < seq, "position ", p[b], " out of the cache");
  at::Tensor out = at::empty({bsz, h, d}, q.options());
  const int64_t g = h / hkv;
  const float* qp = qc.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, bsz * hkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / hkv, kh = t % hkv, len = p[b] + 1;
      const int64_t base = ((slot + b) * hkv + kh) * seq * d;
      const float* qh = qp + (b * h + kh * g) * d;
      float* oh = op + (b * h + kh * g) * d;
      if (d == 64)
        attend<4>(qh, kp + base, vp + base, g, len, sc, oh, scores);
      else
        attend<8>(qh, kp + base, vp + base, g, len, sc, oh, scores);
    }
  });
  return out;
}

bool set_amx(bool on) { return enigma_amx::set_enabled(on); }
bool amx_enabled() { return enigma_amx::enabled(); }

}  // namespace

TORCH_LIBRARY(enigma_avx512, m) {
  m.def("amx_enabled() -> bool", &amx_enabled);
  m.def("set_amx(bool on) -> bool", &set_amx);
  m.def("q4_linear(Tensor x, Tensor codes, Tensor scales, Tensor offsets, int out_features) -> Tensor");
  m.def("i8_linear(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, int slot, Tensor pos, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(enigma_avx512, CPU, m) {
  m.impl("q4_linear", &q4_linear);
  m.impl("i8_linear", &i8_linear);
  m.impl("decode_attention", &decode_attention);
}
