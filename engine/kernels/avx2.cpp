// tile8.h for x86-64 with AVX2 + FMA + F16C (built with -O3 -mavx2 -mfma -mf16c; no AVX-512 anywhere).
//
// Why integers: without AVX-512 BF16 the cheapest dot product is VPMADDUBSW (32 u8 x s8 products summed in
// pairs into s16 per instruction), so activations are quantized to int8 once per call (quantize_rows) and
// every weight byte is multiplied into all rows as integers. A unit of MT rows x NT tiles keeps its
// accumulators in the 16 ymm registers; the weights of a unit are unpacked once and multiplied into each row.
//
// Decode attention is fp32 with 8 positions scored at a time and a shuffle-tree horizontal sum, as in the
// AVX-512 kernels (cpu_kernels.cpp), on 8-lane registers.
//
// Nothing here is mutable shared state: every function may run concurrently on disjoint tile ranges.

#include "tile8.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The VNNI builds of this file (the avx512-vnni and avx-vnni sets): VPDPBUSD adds the four u8 x s8 products of
// each 32-bit lane into an s32 accumulator in one instruction, where AVX2 needs VPMADDUBSW, VPMADDWD and VPADDD.
// It groups the same four bytes per lane, so the results are exactly the AVX2 build's.
#if defined(__AVXVNNI__)
#define ENIGMA_DPBUSD(acc, u8, s8) _mm256_dpbusd_avx_epi32(acc, u8, s8)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define ENIGMA_DPBUSD(acc, u8, s8) _mm256_dpbusd_epi32(acc, u8, s8)
#endif

namespace enigma_tile8 {

namespace {

constexpr int64_t kBlock = 32;  // inputs per activation block (one dx, one sx) and per Q4 group
constexpr int kRows = 4;        // activation rows per unit (MT); see "Unit shape" at q4_tiles

inline __m256i bcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// An empty asm the value must pass through: it stops GCC from reassociating a row's chain of integer adds
// into a tree over all chunks, which keeps every partial product live and spills them (8 rows: 15.5 cycles
// per row, tile and group without it, 11 with).
inline void pin(__m256i& v) { asm("" : "+x"(v)); }

// Lanes [0, live) all ones: the store mask of a partial last tile.
inline __m256i lane_mask(int64_t live) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(live)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline void store_tile(float* y, int64_t n0, int64_t n, __m256 v) {
  if (n0 + 8 <= n)
    _mm256_storeu_ps(y + n0, v);
  else
    _mm256_maskstore_ps(y + n0, lane_mask(n - n0), v);
}

// Calls f with min(rows, kRows) as a compile-time constant, so each row count keeps its own register-resident
// accumulators.
template <class F>
inline void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, kRows>{});
  }
}

// ---- Q4 -----------------------------------------------------------------------------------------------------
//
// Per (tile, group) 4 chunks of 32 bytes; a chunk's low nibbles are inputs 8c..8c+3 of each output lane and its
// high nibbles 8c+4..8c+7, so one broadcast 32-bit word of x8 pairs with each. VPMADDUBSW(code u8, x8 s8) sums
// two products per s16 lane, at most 2 * 15 * 127 = 3810, and the 8 of a group stay below 8 * 3810 = 30480 <
// 32767: they are added in s16 and widened once per group (one VPMADDWD against ones), instead of once per
// chunk. The group's integer sum is scaled once: sum w x = scale * dx * sum code * x8 + min * sx.
//
// The unroll pragmas are needed: left to itself GCC kept the 4-row chunk loops rolled with the sums on the
// stack (int8 at 8 rows: 19 cycles per row, tile and block instead of 13).

template <int MT, int NT>
inline void q4_unit(const uint8_t* codes, const uint16_t* scales, const float* mins, int64_t groups, int64_t tile0,
                    const int8_t* x8, const float* dx, const float* sx, float* y, int64_t ldy, int64_t n) {
  const int64_t k = groups * kBlock;
  const __m256i nib = _mm256_set1_epi8(0x0F);
  [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);  // not in the VNNI builds
  __m256 acc[MT][NT];
  #pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
    #pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[m][j] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i s[MT][NT];
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) {
      __m256i lo[NT], hi[NT];
      #pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        const __m256i w = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(codes + (((tile0 + j) * groups + g) * 4 + c) * 32));
        lo[j] = _mm256_and_si256(w, nib);
        hi[j] = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
      }
      #pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const int8_t* xr = x8 + m * k + g * kBlock + 8 * c;
        const __m256i xl = bcast32(xr), xh = bcast32(xr + 4);
        #pragma GCC unroll 8
        for (int j = 0; j < NT; ++j) {
#ifdef ENIGMA_DPBUSD
          const __m256i from = c == 0 ? _mm256_setzero_si256() : s[m][j];
          s[m][j] = ENIGMA_DPBUSD(ENIGMA_DPBUSD(from, lo[j], xl), hi[j], xh);
#else
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo[j], xl), _mm256_maddubs_epi16(hi[j], xh));
          s[m][j] = c == 0 ? p : _mm256_add_epi16(s[m][j], p);
#endif
          pin(s[m][j]);
        }
      }
    }
    #pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) {
      const int64_t at = ((tile0 + j) * groups + g) * 8;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + at)));
      const __m256 mn = _mm256_loadu_ps(mins + at);
      #pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
#ifdef ENIGMA_DPBUSD
        const __m256 f = _mm256_cvtepi32_ps(s[m][j]);  // already s32
#else
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s[m][j], ones));
#endif
        acc[m][j] = _mm256_fmadd_ps(_mm256_mul_ps(f, _mm256_set1_ps(dx[m * groups + g])), d, acc[m][j]);
        acc[m][j] = _mm256_fmadd_ps(mn, _mm256_set1_ps(sx[m * groups + g]), acc[m][j]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < NT; ++j)
    #pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) store_tile(y + m * ldy, (tile0 + j) * 8, n, acc[m][j]);
}

// ---- int8 ---------------------------------------------------------------------------------------------------
//
// VPMADDUBSW wants one unsigned operand: |w| as u8 and x8 given w's sign (VPSIGNB) make the same products. One
// instruction already reaches 2 * 128 * 127 = 32512, so each is widened to s32 (VPMADDWD against ones) before
// summing; a 32-input block's s32 sum is scaled by dx once, the output's scale at the end.

template <int MT, int NT>
inline void i8_unit(const int8_t* w, const float* scales, int64_t k, int64_t tile0, const int8_t* x8,
                    const float* dx, float* y, int64_t ldy, int64_t n) {
  const int64_t chunks = k / 4, blocks = k / kBlock;
  [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MT][NT];
  #pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
    #pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[m][j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i s[MT][NT];
    #pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      __m256i wv[NT], aw[NT];
      #pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + ((tile0 + j) * chunks + 8 * b + c) * 32));
        aw[j] = _mm256_abs_epi8(wv[j]);
      }
      #pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m256i xb = bcast32(x8 + m * k + b * kBlock + 4 * c);
        #pragma GCC unroll 8
        for (int j = 0; j < NT; ++j) {
#ifdef ENIGMA_DPBUSD
          const __m256i from = c == 0 ? _mm256_setzero_si256() : s[m][j];
          s[m][j] = ENIGMA_DPBUSD(from, aw[j], _mm256_sign_epi8(xb, wv[j]));
#else
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(xb, wv[j])), ones);
          s[m][j] = c == 0 ? p : _mm256_add_epi32(s[m][j], p);
#endif
          pin(s[m][j]);
        }
      }
    }
    #pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m256 dv = _mm256_set1_ps(dx[m * blocks + b]);
      #pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[m][j]), dv, acc[m][j]);
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < NT; ++j) {
    const int64_t n0 = (tile0 + j) * 8;
    const __m256 sv =
        n0 + 8 <= n ? _mm256_loadu_ps(scales + n0) : _mm256_maskload_ps(scales + n0, lane_mask(n - n0));
    #pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) store_tile(y + m * ldy, n0, n, _mm256_mul_ps(acc[m][j], sv));
  }
}

// ---- decode attention ---------------------------------------------------------------------------------------

// exp for x <= 0 (softmax after subtracting the max): x = n ln2 + r, |r| <= ln2 / 2, a degree-6 Taylor
// polynomial for e^r (truncation error 0.347^7 / 5040 = 1.2e-7 relative) times 2^n built in the exponent
// field; the clamp at -87 keeps n >= -126, a normal float.
inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The 8 horizontal sums of v[0..7] as one vector (lane i = sum of v[i]): a shuffle tree of 21 operations
// instead of 8 separate reductions of about 6 each.
inline __m256 hsum8(const __m256 v[8]) {
  __m256 r1[4], r2[2];
  for (int i = 0; i < 4; ++i)  // lanes (0, 1, 2, 3) of r1[i]: v[2i] lanes 0+2, v[2i+1] 0+2, v[2i] 1+3, v[2i+1] 1+3
    r1[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 2; ++i)  // lane e of each 128-bit half of r2[i]: the half's sum of v[4i + e]
    r2[i] = _mm256_add_ps(_mm256_shuffle_ps(r1[2 * i], r1[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm256_shuffle_ps(r1[2 * i], r1[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm256_add_ps(_mm256_permute2f128_ps(r2[0], r2[1], 0x20), _mm256_permute2f128_ps(r2[0], r2[1], 0x31));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Dot products of q (d floats) with 8 consecutive key rows, as one vector. DV = d / 8 as a constant (8, 16
// at d = 64, 128), or 0 for any other d multiple of 16.
template <int DV>
inline __m256 dot8(const float* q, const float* kr, int64_t d) {
  const int64_t dv = DV ? DV : d / 8;
  __m256 a[8];
  for (int p = 0; p < 8; ++p) a[p] = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(kr + p * d));
  for (int64_t i = 1; i < dv; ++i) {
    const __m256 qv = _mm256_loadu_ps(q + 8 * i);
    for (int p = 0; p < 8; ++p) a[p] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + p * d + 8 * i), a[p]);
  }
  return hsum8(a);
}

template <int DV>
inline float dot1(const float* q, const float* kr, int64_t d) {
  const int64_t dv = DV ? DV : d / 8;
  __m256 a = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(kr));
  for (int64_t i = 1; i < dv; ++i) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * i), _mm256_loadu_ps(kr + 8 * i), a);
  return hsum(a);
}

// Probabilities times values for HN heads over columns [c, c + 8 S): HN x S accumulators, each value load
// feeding HN FMAs.
template <int HN, int S>
inline void pv_slice(const float* p, int64_t stride, const float* v, int64_t len, int64_t d, int64_t c, float* out) {
  __m256 a[HN][S];
#pragma GCC unroll 8
  for (int h = 0; h < HN; ++h)
#pragma GCC unroll 8
    for (int i = 0; i < S; ++i) a[h][i] = _mm256_setzero_ps();
  const float* vr = v + c;
  for (int64_t l = 0; l < len; ++l, vr += d) {
    __m256 vv[S];
#pragma GCC unroll 8
    for (int i = 0; i < S; ++i) vv[i] = _mm256_loadu_ps(vr + 8 * i);
#pragma GCC unroll 8
    for (int h = 0; h < HN; ++h) {
      const __m256 ph = _mm256_broadcast_ss(p + h * stride + l);
#pragma GCC unroll 8
      for (int i = 0; i < S; ++i) a[h][i] = _mm256_fmadd_ps(ph, vv[i], a[h][i]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HN; ++h)
#pragma GCC unroll 8
    for (int i = 0; i < S; ++i) _mm256_storeu_ps(out + h * d + c + 8 * i, a[h][i]);
}

// All d columns for HN heads in slices of S vectors (HN x S + S + 1 <= 16 registers: 4 x 2, 3 x 3, 2 x 4,
// 1 x 8), the last slice narrower where d / 8 is not a multiple of S (d = 64 with 3 heads: 3 + 3 + 2).
template <int HN, int S>
inline void pv_heads(const float* p, int64_t stride, const float* v, int64_t len, int64_t d, float* out) {
  int64_t c = 0;
  for (; c + 8 * S <= d; c += 8 * S) pv_slice<HN, S>(p, stride, v, len, d, c, out);
  if constexpr (S > 1) {
    switch ((d - c) / 8) {
      case 0: break;
      case 1: pv_slice<HN, 1>(p, stride, v, len, d, c, out); break;
      case 2: pv_slice<HN, 2>(p, stride, v, len, d, c, out); break;
      case 3: pv_slice<HN, 3>(p, stride, v, len, d, c, out); break;
      case 4: pv_slice<HN, 4>(p, stride, v, len, d, c, out); break;
      case 5: pv_slice<HN, 5>(p, stride, v, len, d, c, out); break;
      case 6: pv_slice<HN, 6>(p, stride, v, len, d, c, out); break;
      default: pv_slice<HN, 7>(p, stride, v, len, d, c, out); break;
    }
  }
}

template <int DV>
void attend_impl(const float* q, const float* k, const float* v, int64_t g, int64_t len, int64_t d, float scale,
                 float* out, float* scratch) {
  const int64_t stride = (len + 15) / 16 * 16;
  const int64_t full = len / 8 * 8;
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t h = 0; h < g; ++h) {
    float* s = scratch + h * stride;
    const float* qh = q + h * d;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int64_t l = 0; l < full; l += 8) {
      const __m256 sv = _mm256_mul_ps(dot8<DV>(qh, k + l * d, d), sc);
      _mm256_storeu_ps(s + l, sv);
      mx = _mm256_max_ps(mx, sv);
    }
    float m = hmax(mx);
    for (int64_t l = full; l < len; ++l) m = std::max(m, s[l] = dot1<DV>(qh, k + l * d, d) * scale);
    // Numerators exp(s - max) in place; lanes past len (the tail of the last vector, in scratch) are zeroed.
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t l = 0; l < len; l += 8) {
      __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + l), mv));
      if (l + 8 > len) e = _mm256_and_ps(e, _mm256_castsi256_ps(lane_mask(len - l)));
      _mm256_storeu_ps(s + l, e);
      sum = _mm256_add_ps(sum, e);
    }
    // Normalised here (len / 8 multiplies) rather than after the value sums, so no per-head state is kept.
    const __m256 iv = _mm256_set1_ps(1.0f / hsum(sum));
    for (int64_t l = 0; l < len; l += 8) _mm256_storeu_ps(s + l, _mm256_mul_ps(_mm256_loadu_ps(s + l), iv));
  }
  for (int64_t h0 = 0; h0 < g; h0 += 4) {
    const float* p = scratch + h0 * stride;
    float* o = out + h0 * d;
    switch (std::min<int64_t>(4, g - h0)) {
      case 1: pv_heads<1, 8>(p, stride, v, len, d, o); break;
      case 2: pv_heads<2, 4>(p, stride, v, len, d, o); break;
      case 3: pv_heads<3, 3>(p, stride, v, len, d, o); break;
      default: pv_heads<4, 2>(p, stride, v, len, d, o); break;
    }
  }
}

}  // namespace

const char* isa() { return "avx2"; }

void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* x8, float* dx, float* sx) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int64_t blocks = k / kBlock;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + m * k + b * kBlock;
      __m256 v[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
      const __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                                        _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)));
      const float a = hmax(amax);
      const float d = a / 127.0f;
      dx[m * blocks + b] = d;
      int8_t* q = x8 + m * k + b * kBlock;
      if (d == 0.0f) {
        sx[m * blocks + b] = 0.0f;
        std::memset(q, 0, kBlock);
        continue;
      }
      // x / d rounded to nearest even (VCVTPS2DQ under the default rounding mode, as torch.round); a division,
      // not a multiplication by 1 / d, so halves round as the reference's x / d does.
      const __m256 dv = _mm256_set1_ps(d);
      __m256i i32[4];
      for (int i = 0; i < 4; ++i)
        i32[i] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(_mm256_div_ps(v[i], dv)), lim), nlim);
      // sx = dx * sum x8 (tile8.h): the integer sum is exact, so this is one rounding, as the reference's.
      const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
      sx[m * blocks + b] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
      // packs work within 128-bit halves: bytes come out as dwords 0,2,4,6,1,3,5,7 of 4-byte groups.
      const __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
      const __m256i i8v = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16a, i16b), order);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i8v);
    }
}

// Unit shape: 4 rows x 1 tile (MT x NT). Q4 needs MT * NT s16 sums + MT * NT fp32 accumulators + 2 unpacked
// nibble vectors per tile + 2 broadcasts + 2 constants, so 4 x 1 (14 registers) and 2 x 2 (16) are the largest
// that fit. Measured on Zen 3 (one thread, 576 x 576 in L2, cycles per row x tile x group at 8 rows): 4 x 1
// 11.2, 2 x 2 11.2 to 13.3, 3 x 1 12.4, 2 x 1 13.7; int8 per row x tile x 32 inputs: 4 x 1 13.0, 2 x 2 13.2,
// 2 x 1 13.7. 4 x 1 also lets any tile range run without a remainder unit. The code is issue-bound at about
// 2 vector instructions per cycle, not multiply-bound (VPMADDUBSW alone runs at 2 per cycle), so what counts is
// instructions per row: 8 VPMADDUBSW + 7 VPADDW + 5 for the scaling per Q4 group, 4 per int8 chunk.
// At one row the kernels are DRAM-bound (Q4 at 12 to 16 GB/s of weights on one thread, a plain read loop 13 to
// 15), so 2 to 4 rows cost little more than one; from 8 rows the instruction count decides (8 rows about 2.2x
// one row with weights from DRAM). A unit's weights (at most 48 groups x 176 bytes = 8 KB at k = 1536) stay in
// L1 while its row chunks pass over them.
void q4_tiles(const uint8_t* codes, const uint16_t* scales, const float* mins, int64_t groups, int64_t t0,
              int64_t t1, const int8_t* x8, const float* dx, const float* sx, int64_t rows, float* y, int64_t ldy,
              int64_t n) {
  const int64_t k = groups * kBlock;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < rows; m0 += kRows)
      with_rows(rows - m0, [&](auto nr) {
        q4_unit<decltype(nr)::value, 1>(codes, scales, mins, groups, t, x8 + m0 * k, dx + m0 * groups,
                                        sx + m0 * groups, y + m0 * ldy, ldy, n);
      });
}

void i8_tiles(const int8_t* w, const float* scales, int64_t k, int64_t t0, int64_t t1, const int8_t* x8,
              const float* dx, int64_t rows, float* y, int64_t ldy, int64_t n) {
  const int64_t blocks = k / kBlock;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < rows; m0 += kRows)
      with_rows(rows - m0, [&](auto nr) {
        i8_unit<decltype(nr)::value, 1>(w, scales, k, t, x8 + m0 * k, dx + m0 * blocks, y + m0 * ldy, ldy, n);
      });
}

void attend(const float* q, const float* k, const float* v, int64_t g, int64_t len, int64_t d, float scale,
            float* out, float* scratch) {
  if (d == 64)
    attend_impl<8>(q, k, v, g, len, d, scale, out, scratch);
  else if (d == 128)
    attend_impl<16>(q, k, v, g, len, d, scale, out, scratch);
  else
    attend_impl<0>(q, k, v, g, len, d, scale, out, scratch);
}

}  // namespace enigma_tile8
