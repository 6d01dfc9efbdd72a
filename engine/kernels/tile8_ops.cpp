// The tile8 kernels (tile8.h) as torch ops: argument checks, activation quantization, and the split of output
// tiles across PyTorch's intra-op threads. Built once per instruction set with ENIGMA_OPS_NS naming the op
// namespace (enigma_avx2, enigma_neon, enigma_neon_dot), so a process can hold several sets side by side and
// the tests can compare them; engine/kernels/__init__.py picks the one the engine uses.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "tile8.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#ifndef ENIGMA_OPS_NS
#error "ENIGMA_OPS_NS must name the op namespace"
#endif

namespace {

constexpr int64_t kBlock = 32;
// Output tiles per task: 576 outputs are 72 tiles, so two threads get 36 each; smaller tasks only add
// scheduling cost (a tile of 8 outputs x 576 inputs is about 0.1 µs of work at one row).
constexpr int64_t kGrain = 4;
// Activation rows per pass over the weights: a prefill of hundreds of rows is cut so that one pass's int8
// rows stay in L2 (64 rows x 1536 inputs = 96 KB) while its weights stream by.
constexpr int64_t kRowBlock = 64;

struct Acts {
  at::Tensor x8, dx, sx;
};

Acts quantize(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == k, "x must be (rows, ", k, "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0);
  Acts a{at::empty({rows, k}, xf.options().dtype(at::kChar)), at::empty({rows, k / kBlock}, xf.options()),
         at::empty({rows, k / kBlock}, xf.options())};
  const float* xp = xf.data_ptr<float>();
  int8_t* q = a.x8.data_ptr<int8_t>();
  float* dx = a.dx.data_ptr<float>();
  float* sx = a.sx.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    enigma_tile8::quantize_rows(xp + r0 * k, r1 - r0, k, q + r0 * k, dx + r0 * (k / kBlock), sx + r0 * (k / kBlock));
  });
  return a;
}

// Calls body(first row, rows) per block of rows, and within it body's tile range split across the threads.
template <class Body>
void for_row_blocks(int64_t rows, int64_t tiles, const Body& body) {
  for (int64_t m0 = 0; m0 < rows; m0 += kRowBlock) {
    const int64_t mr = std::min(kRowBlock, rows - m0);
    at::parallel_for(0, tiles, kGrain, [&](int64_t t0, int64_t t1) { body(m0, mr, t0, t1); });
  }
}

at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& mins,
                     int64_t n) {
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 4 && codes.size(2) == 4 && codes.size(3) == 32 &&
                  codes.is_contiguous(),
              "codes must be contiguous uint8 (tiles, groups, 4, 32)");
  const int64_t tiles = codes.size(0), groups = codes.size(1), k = groups * kBlock;
  TORCH_CHECK(n > 0 && (n + 7) / 8 == tiles, "out_features ", n, " does not fit ", tiles, " tiles of 8");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.sizes() == at::IntArrayRef({tiles, groups, 8}),
              "scales must be contiguous float16 (tiles, groups, 8)");
  TORCH_CHECK(mins.scalar_type() == at::kFloat && mins.is_contiguous() &&
                  mins.sizes() == at::IntArrayRef({tiles, groups, 8}),
              "mins must be contiguous float32 (tiles, groups, 8)");
  const Acts a = quantize(x, k);
  const int64_t rows = a.x8.size(0);
  at::Tensor y = at::empty({rows, n}, a.dx.options());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const auto* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  const float* mp = mins.data_ptr<float>();
  const int8_t* x8 = a.x8.data_ptr<int8_t>();
  const float* dx = a.dx.data_ptr<float>();
  const float* sx = a.sx.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_row_blocks(rows, tiles, [&](int64_t m0, int64_t mr, int64_t t0, int64_t t1) {
    enigma_tile8::q4_tiles(cp, sp, mp, groups, t0, t1, x8 + m0 * k, dx + m0 * groups, sx + m0 * groups, mr,
                           yp + m0 * n, n, n);
  });
  return y;
}

at::Tensor i8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 3 && w.size(2) == 32 && w.is_contiguous(),
              "w must be contiguous int8 (tiles, in / 4, 32)");
  const int64_t tiles = w.size(0), k = 4 * w.size(1), n = scales.numel();
  TORCH_CHECK(k % kBlock == 0, "in_features must be a multiple of 32, got ", k);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.is_contiguous() && n > 0 &&
                  (n + 7) / 8 == tiles,
              "scales must be contiguous float32 (out,) for ", tiles, " tiles of 8");
  // The kernels read a whole tile's scales: pad a partial last tile with zeros.
  const at::Tensor sc = n == 8 * tiles ? scales : at::constant_pad_nd(scales, {0, 8 * tiles - n}, 0);
  const Acts a = quantize(x, k);
  const int64_t rows = a.x8.size(0);
  at::Tensor y = at::empty({rows, n}, a.dx.options());
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  const int8_t* x8 = a.x8.data_ptr<int8_t>();
  const float* dx = a.dx.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_row_blocks(rows, tiles, [&](int64_t m0, int64_t mr, int64_t t0, int64_t t1) {
    enigma_tile8::i8_tiles(wp, sp, k, t0, t1, x8 + m0 * k, dx + m0 * (k / kBlock), mr, yp + m0 * n, n, n);
  });
  return y;
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
  TORCH_CHECK(kc.size(3) == d && d % 16 == 0, "head dim must match the cache's and be a multiple of 16, got ", d);
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
    std::vector<float> scratch;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / hkv, kh = t % hkv, len = p[b] + 1;
      const int64_t base = ((slot + b) * hkv + kh) * seq * d;
      scratch.resize(static_cast<size_t>(g * ((len + 15) / 16 * 16)));
      enigma_tile8::attend(qp + (b * h + kh * g) * d, kp + base, vp + base, g, len, d, sc,
                           op + (b * h + kh * g) * d, scratch.data());
    }
  });
  return out;
}

std::string isa() { return enigma_tile8::isa(); }

}  // namespace

TORCH_LIBRARY(ENIGMA_OPS_NS, m) {
  m.def("isa() -> str", &isa);
  m.def("q4_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins, int out_features) -> Tensor");
  m.def("i8_linear(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, int slot, Tensor pos, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(ENIGMA_OPS_NS, CPU, m) {
  m.impl("q4_linear", &q4_linear);
  m.impl("i8_linear", &i8_linear);
  m.impl("decode_attention", &decode_attention);
}
