// The AMX (Advanced Matrix Extensions) half of the low-bit matmuls: see amx.cpp.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace enigma_amx {

// Whether this CPU has AMX-BF16 and Linux granted this process the tile state (asked for once, on first call).
bool available();
// Whether the matmuls use AMX for batches of activation rows: available() and not switched off.
bool enabled();
// Switch AMX use on or off for this process (tests compare both paths); returns enabled() afterwards.
bool set_enabled(bool on);

// y[m, 16 t + j] for every row m < mrows and output tiles t in [t0, t1), over the Q4 lane layout that
// cpu_kernels.cpp documents. x is (mrows, k) bf16 with k = 32 * groups; xs holds each row's per-group input sums.
void q4_tiles(const uint8_t* codes, const c10::Half* scales, const float* offsets, int64_t groups, int64_t t0,
              int64_t t1, const c10::BFloat16* x, int64_t mrows, const float* xs, float* y, int64_t n);

// The same for the int8 lane layout (tiles, k / 2, 32) with one scale per output row.
void i8_tiles(const int8_t* w, const float* scales, int64_t k, int64_t t0, int64_t t1, const c10::BFloat16* x,
              int64_t mrows, float* y, int64_t n);

}  // namespace enigma_amx
