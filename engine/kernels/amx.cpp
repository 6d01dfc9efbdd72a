// Q4 and int8 matmuls on AMX tiles, for batches of activation rows (a batched decode step, a prefill chunk).
//
// Why: with VDPBF16PS every activation row costs one instruction per 32 multiply-adds, so a decode step of 8
// rows is compute-bound at about 2.5x the cost of one row. One AMX TDPBF16PS multiplies a 16x32 bf16 block of
// activations by a 32x16 block of weights (8192 multiply-adds) in about the time of 16 VDPBF16PS, so extra
// rows become nearly free and what is left is turning weights into bf16 once per step.
//
// The lane layouts of cpu_kernels.cpp are already AMX's B layout: a vector of 16 output channels x 2
// consecutive inputs is one 64-byte row of a B tile, and a quantization group of 32 inputs is one whole tile.
// So a group is dequantized exactly as the vector kernels do it (0x4300 | q is the bf16 128 + q), stored as a
// 1 KB tile, and multiplied into up to 16 activation rows at once. Q4's per-group scale cannot live inside
// the tile, so each group's product is stored and scaled into fp32 accumulators:
//   sum_k w_k x_k = d * sum_k (128 + q_k) x_k + (m - 128 d) * sum_k x_k
// The int8 head has one scale per output row: its tile accumulates over the whole input and is scaled once.
//
// Linux hands out AMX's 8 KB of tile state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM);
// available() asks once. Each call configures the tiles on the thread that runs it and, at the end, puts back
// whatever configuration the thread had: the OpenMP threads are shared with every other library in the
// process, and one that configures a thread's tiles once and keeps them would fault at its next tile
// instruction if they were released under it. A thread that had none is released, so it carries no tile
// state between calls.

#include "amx.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

namespace enigma_amx {
namespace {

constexpr int kRows = 16;  // activation rows per A tile
constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tile registers: A (activations), two B (weights of two output tiles), two pairs of C (their products, for
// alternate groups). Macros, not constants: GCC's tile intrinsics paste the number into the instruction text.
#define kA 0
#define kB0 1
#define kB1 2
#define kC0 3
#define kC1 4
#define kC2 5
#define kC3 6

void configure(int rows) {
  TileConfig cfg;
  for (int t : {kA, kC0, kC1, kC2, kC3}) {
    cfg.rows[t] = static_cast<uint8_t>(rows);
    cfg.colsb[t] = 64;
  }
  for (int t : {kB0, kB1}) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Keeps this thread's tile configuration (or its absence) across one kernel call.
class TileScope {
 public:
  TileScope() { _tile_storeconfig(&saved_); }
  ~TileScope() {
    if (saved_.palette != 0)
      _tile_loadconfig(&saved_);
    else
      _tile_release();
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  TileConfig saved_;
};

bool probe() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  if (!tile || !bf16) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

std::once_flag probed;
bool have = false;
std::atomic<bool> wanted{true};

// One group's 16 B-tile rows for output tile t from the Q4 codes (see the layout in cpu_kernels.cpp).
inline void q4_b_tile(const uint8_t* codes, int64_t groups, int64_t t, int64_t g, uint16_t* b) {
  const __m512i nib = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
  const uint8_t* p = codes + (t * groups + g) * 8 * 32;
  for (int c = 0; c < 8; ++c) {
    const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + c * 32)));
    _mm512_store_si512(b + (2 * c) * 32, _mm512_ternarylogic_epi32(w16, nib, magic, 0xEA));
    _mm512_store_si512(b + (2 * c + 1) * 32, _mm512_ternarylogic_epi32(_mm512_srli_epi16(w16, 4), nib, magic, 0xEA));
  }
}

// One group's 16 B-tile rows for output tile t from the int8 lane layout: each int8 is exact in bf16.
inline void i8_b_tile(const int8_t* w, int64_t chunks, int64_t t, int64_t g, uint16_t* b) {
  const int8_t* p = w + (t * chunks + g * 16) * 32;
  for (int r = 0; r < 16; ++r) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    const __m512 hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    _mm512_store_si512(b + r * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    p += 32;
  }
}

inline __mmask16 lanes(int64_t n0, int64_t n) {
  return n0 + 16 <= n ? __mmask16(0xFFFF) : __mmask16((1u << (n - n0)) - 1);
}

}  // namespace

bool available() {
  std::call_once(probed, [] { have = probe(); });
  return have;
}

bool enabled() { return wanted.load(std::memory_order_relaxed) && available(); }

bool set_enabled(bool on) {
  wanted.store(on, std::memory_order_relaxed);
  return enabled();
}

// Multiplies group g into C tiles (c, c + 1 for the pair): the tile products of one group run while the
// caller scales the previous group's, which were stored from the other pair of C tiles.
template <int Parity>
inline void q4_group_product(const uint8_t* codes, int64_t groups, int64_t t, int64_t g, bool pair,
                             const c10::BFloat16* a, int64_t lda, uint16_t (*b)[16 * 32]) {
  q4_b_tile(codes, groups, t, g, b[0]);
  if (pair) q4_b_tile(codes, groups, t + 1, g, b[1]);
  _tile_loadd(kA, a, lda);
  _tile_loadd(kB0, b[0], 64);
  if (pair) _tile_loadd(kB1, b[1], 64);
  if constexpr (Parity == 0) {
    _tile_zero(kC0);
    _tile_dpbf16ps(kC0, kA, kB0);
    if (pair) {
      _tile_zero(kC1);
      _tile_dpbf16ps(kC1, kA, kB1);
    }
  } else {
    _tile_zero(kC2);
    _tile_dpbf16ps(kC2, kA, kB0);
    if (pair) {
      _tile_zero(kC3);
      _tile_dpbf16ps(kC3, kA, kB1);
    }
  }
}

template <int Parity>
inline void q4_store_products(bool pair, float (*cbuf)[kRows * 16]) {
  if constexpr (Parity == 0) {
    _tile_stored(kC0, cbuf[0], 64);
    if (pair) _tile_stored(kC1, cbuf[1], 64);
  } else {
    _tile_stored(kC2, cbuf[0], 64);
    if (pair) _tile_stored(kC3, cbuf[1], 64);
  }
}

void q4_tiles(const uint8_t* codes, const c10::Half* scales, const float* offsets, int64_t groups, int64_t t0,
              int64_t t1, const c10::BFloat16* x, int64_t mrows, const float* xs, float* y, int64_t n) {
  const int64_t k = groups * 32;
  const TileScope scope;
  alignas(64) uint16_t b[2][16 * 32];
  alignas(64) float cbuf[2][kRows * 16];
  alignas(64) float acc[2][kRows * 16];
  int configured = 0;
  for (int64_t m0 = 0; m0 < mrows; m0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, mrows - m0));
    if (rows != configured) configure(configured = rows);
    const c10::BFloat16* xa = x + m0 * k;
    for (int64_t t = t0; t < t1; t += 2) {
      const bool pair = t + 1 < t1;
      const int tiles = pair ? 2 : 1;
      std::memset(acc, 0, sizeof(acc));
      // Group g's products are scaled into acc after group g + 1's are under way.
      auto scale_in = [&](int64_t g) {
        for (int h = 0; h < tiles; ++h) {
          const int64_t at = ((t + h) * groups + g) * 16;
          const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + at)));
          const __m512 ov = _mm512_loadu_ps(offsets + at);
          for (int r = 0; r < rows; ++r) {
            __m512 a = _mm512_load_ps(acc[h] + r * 16);
            a = _mm512_fmadd_ps(_mm512_load_ps(cbuf[h] + r * 16), dv, a);
            a = _mm512_fmadd_ps(_mm512_set1_ps(xs[(m0 + r) * groups + g]), ov, a);
            _mm512_store_ps(acc[h] + r * 16, a);
          }
        }
      };
      for (int64_t g = 0; g < groups; ++g) {
        if (g % 2 == 0) {
          q4_group_product<0>(codes, groups, t, g, pair, xa + g * 32, k * 2, b);
          if (g > 0) {
            q4_store_products<1>(pair, cbuf);
            scale_in(g - 1);
          }
        } else {
          q4_group_product<1>(codes, groups, t, g, pair, xa + g * 32, k * 2, b);
          q4_store_products<0>(pair, cbuf);
          scale_in(g - 1);
        }
      }
      if ((groups - 1) % 2 == 0)
        q4_store_products<0>(pair, cbuf);
      else
        q4_store_products<1>(pair, cbuf);
      scale_in(groups - 1);
      for (int h = 0; h < tiles; ++h) {
        const int64_t n0 = (t + h) * 16;
        const __mmask16 keep = lanes(n0, n);
        for (int r = 0; r < rows; ++r) _mm512_mask_storeu_ps(y + (m0 + r) * n + n0, keep, _mm512_load_ps(acc[h] + r * 16));
      }
    }
  }
}

void i8_tiles(const int8_t* w, const float* scales, int64_t k, int64_t t0, int64_t t1, const c10::BFloat16* x,
              int64_t mrows, float* y, int64_t n) {
  const int64_t groups = k / 32, chunks = k / 2;
  const TileScope scope;
  alignas(64) uint16_t b[2][16 * 32];
  alignas(64) float cbuf[kRows * 16];
  int configured = 0;
  for (int64_t m0 = 0; m0 < mrows; m0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, mrows - m0));
    if (rows != configured) configure(configured = rows);
    for (int64_t t = t0; t < t1; t += 2) {
      const bool pair = t + 1 < t1;
      _tile_zero(kC0);
      if (pair) _tile_zero(kC1);
      for (int64_t g = 0; g < groups; ++g) {
        _tile_loadd(kA, x + m0 * k + g * 32, k * 2);
        i8_b_tile(w, chunks, t, g, b[0]);
        _tile_loadd(kB0, b[0], 64);
        _tile_dpbf16ps(kC0, kA, kB0);
        if (pair) {
          i8_b_tile(w, chunks, t + 1, g, b[1]);
          _tile_loadd(kB1, b[1], 64);
          _tile_dpbf16ps(kC1, kA, kB1);
        }
      }
      for (int h = 0; h < (pair ? 2 : 1); ++h) {
        if (h == 0)
          _tile_stored(kC0, cbuf, 64);
        else
          _tile_stored(kC1, cbuf, 64);
        const int64_t n0 = (t + h) * 16;
        const __mmask16 keep = lanes(n0, n);
        const __m512 sv = _mm512_maskz_loadu_ps(keep, scales + n0);
        for (int r = 0; r < rows; ++r)
          _mm512_mask_storeu_ps(y + (m0 + r) * n + n0, keep, _mm512_mul_ps(_mm512_load_ps(cbuf + r * 16), sv));
      }
    }
  }
}

}  // namespace enigma_amx
