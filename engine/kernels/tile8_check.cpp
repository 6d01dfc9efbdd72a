// A standalone driver for one implementation of tile8.h (no PyTorch), so the kernels can be checked where torch
// cannot load them: the aarch64 builds under qemu-user on an x86 machine. tests/engine/test_kernels_cross.py
// builds it with neon.cpp or avx2.cpp and compares its answers with references computed in torch.
//
//   g++ -O2 -mavx2 -mfma -mf16c tile8_check.cpp avx2.cpp                                   (x86-64)
//   aarch64-linux-gnu-g++ -O2 -static -march=armv8.2-a+dotprod tile8_check.cpp neon.cpp    (run: qemu-aarch64)
//
// Protocol: stdin holds any number of requests, each one text line "op int64..." followed by raw little-endian
// arrays; stdout gets each request's answer in order, as raw arrays (or a text line for isa). Requests:
//
//   isa                                 -> "name\n"
//   quantize rows k                     in: x f32[rows*k]            out: x8 i8[rows*k], dx f32[rows*k/32],
//                                                                         sx f32[rows*k/32]
//   q4 rows n groups t0 t1 ldy          in: codes u8[tiles*groups*128], scales u16[tiles*groups*8],
//                                           mins f32[tiles*groups*8], x8 i8[rows*k], dx f32[rows*groups],
//                                           sx f32[rows*groups]        out: y f32[rows*ldy]
//   i8 rows n k t0 t1 ldy               in: w i8[tiles*k*8], scales f32[tiles*8], x8 i8[rows*k],
//                                           dx f32[rows*k/32]          out: y f32[rows*ldy]
//   attend g len d                      in: scale f32, q f32[g*d], k f32[len*d], v f32[len*d]   out: f32[g*d]
//
// with tiles = (n + 7) / 8 and, for q4, k = 32 * groups. y starts as NaN everywhere, so the caller can check
// that nothing outside rows x [8 t0, min(8 t1, n)) was written. The scratch given to attend is exactly the size
// tile8.h promises, followed by guard values that must survive. Errors go to stderr with exit status 1.

#include "tile8.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "tile8_check: %s\n", why.c_str());
  std::exit(1);
}

template <class T>
std::vector<T> read_array(int64_t count, const char* what) {
  if (count < 0) fail(std::string("negative size for ") + what);
  std::vector<T> v(static_cast<size_t>(count));
  if (count > 0 && std::fread(v.data(), sizeof(T), v.size(), stdin) != v.size())
    fail(std::string("short input reading ") + what);
  return v;
}

template <class T>
void write_array(const std::vector<T>& v) {
  if (!v.empty() && std::fwrite(v.data(), sizeof(T), v.size(), stdout) != v.size()) fail("short write");
}

// One header line, without its newline; false at the end of input.
bool read_line(std::string& line) {
  line.clear();
  int c;
  while ((c = std::getc(stdin)) != EOF && c != '\n') line.push_back(static_cast<char>(c));
  return c != EOF || !line.empty();
}

std::vector<int64_t> ints(std::istringstream& in, size_t count, const std::string& op) {
  std::vector<int64_t> v(count);
  for (auto& x : v)
    if (!(in >> x)) fail("request " + op + " wants " + std::to_string(count) + " integers");
  return v;
}

void check_tiles(int64_t n, int64_t t0, int64_t t1, int64_t rows, int64_t ldy) {
  if (n <= 0 || rows <= 0 || t0 < 0 || t1 < t0 || t1 > (n + 7) / 8 || ldy < n) fail("bad tile request");
}

std::vector<float> nan_output(int64_t rows, int64_t ldy) {
  return std::vector<float>(static_cast<size_t>(rows * ldy), std::numeric_limits<float>::quiet_NaN());
}

}  // namespace

int main() {
  std::string line;
  while (read_line(line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    std::string op;
    in >> op;
    if (op == "isa") {
      std::printf("%s\n", enigma_tile8::isa());
    } else if (op == "quantize") {
      const auto a = ints(in, 2, op);
      const int64_t rows = a[0], k = a[1];
      if (rows <= 0 || k <= 0 || k % 32 != 0) fail("bad quantize request");
      const auto x = read_array<float>(rows * k, "x");
      std::vector<int8_t> x8(static_cast<size_t>(rows * k));
      std::vector<float> dx(static_cast<size_t>(rows * k / 32)), sx(dx.size());
      enigma_tile8::quantize_rows(x.data(), rows, k, x8.data(), dx.data(), sx.data());
      write_array(x8);
      write_array(dx);
      write_array(sx);
    } else if (op == "q4") {
      const auto a = ints(in, 6, op);
      const int64_t rows = a[0], n = a[1], groups = a[2], t0 = a[3], t1 = a[4], ldy = a[5];
      check_tiles(n, t0, t1, rows, ldy);
      if (groups <= 0) fail("bad q4 request");
      const int64_t tiles = (n + 7) / 8, k = 32 * groups;
      const auto codes = read_array<uint8_t>(tiles * groups * 128, "codes");
      const auto scales = read_array<uint16_t>(tiles * groups * 8, "scales");
      const auto mins = read_array<float>(tiles * groups * 8, "mins");
      const auto x8 = read_array<int8_t>(rows * k, "x8");
      const auto dx = read_array<float>(rows * groups, "dx");
      const auto sx = read_array<float>(rows * groups, "sx");
      auto y = nan_output(rows, ldy);
      enigma_tile8::q4_tiles(codes.data(), scales.data(), mins.data(), groups, t0, t1, x8.data(), dx.data(),
                             sx.data(), rows, y.data(), ldy, n);
      write_array(y);
    } else if (op == "i8") {
      const auto a = ints(in, 6, op);
      const int64_t rows = a[0], n = a[1], k = a[2], t0 = a[3], t1 = a[4], ldy = a[5];
      check_tiles(n, t0, t1, rows, ldy);
      if (k <= 0 || k % 32 != 0) fail("bad i8 request");
      const int64_t tiles = (n + 7) / 8;
      const auto w = read_array<int8_t>(tiles * k * 8, "w");
      const auto scales = read_array<float>(tiles * 8, "scales");
      const auto x8 = read_array<int8_t>(rows * k, "x8");
      const auto dx = read_array<float>(rows * k / 32, "dx");
      auto y = nan_output(rows, ldy);
      enigma_tile8::i8_tiles(w.data(), scales.data(), k, t0, t1, x8.data(), dx.data(), rows, y.data(), ldy, n);
      write_array(y);
    } else if (op == "attend") {
      const auto a = ints(in, 3, op);
      const int64_t g = a[0], len = a[1], d = a[2];
      if (g <= 0 || len <= 0 || d <= 0 || d % 16 != 0) fail("bad attend request");
      const auto scale = read_array<float>(1, "scale");
      const auto q = read_array<float>(g * d, "q");
      const auto k = read_array<float>(len * d, "k");
      const auto v = read_array<float>(len * d, "v");
      constexpr int64_t kGuard = 64;
      constexpr float kGuardValue = -12345.f;
      const int64_t need = g * ((len + 15) / 16 * 16);
      std::vector<float> scratch(static_cast<size_t>(need + kGuard), kGuardValue);
      std::vector<float> out(static_cast<size_t>(g * d));
      enigma_tile8::attend(q.data(), k.data(), v.data(), g, len, d, scale[0], out.data(), scratch.data());
      for (int64_t i = need; i < need + kGuard; ++i)
        if (scratch[static_cast<size_t>(i)] != kGuardValue) fail("attend wrote past its scratch");
      write_array(out);
    } else {
      fail("unknown request '" + op + "'");
    }
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}
