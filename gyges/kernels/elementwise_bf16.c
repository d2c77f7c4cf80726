#include <math.h>

#include "bf16_common.h"

/* The small steps between matmuls, one pass each instead of four or five PyTorch ops, rounding to
   bf16 exactly where HF's Llama does. Widths are multiples of 16. */

/* x += delta (if given), then out = weight * bf16(x * rsqrt(mean(x^2) + eps)), in fp32 inside. */
void residual_rms_norm_bf16(uint16_t *x, const uint16_t *delta, const uint16_t *weight, float eps,
                            uint16_t *out, int64_t rows, int64_t width) {
#pragma omp parallel for if (rows > 8)
  for (int64_t r = 0; r < rows; r++) {
    uint16_t *xr = x + r * width, *o = out + r * width;
    __m512 ss = _mm512_setzero_ps();
    for (int64_t c = 0; c < width; c += 16) {
      __m512 v = load_bf16(xr + c);
      if (delta) {
        v = round_bf16(_mm512_add_ps(v, load_bf16(delta + r * width + c)));
        store_bf16(xr + c, v);
      }
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    __m512 rs = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)width + eps));
    for (int64_t c = 0; c < width; c += 16) {
      __m512 n = round_bf16(_mm512_mul_ps(load_bf16(xr + c), rs));
      store_bf16(o + c, _mm512_mul_ps(n, load_bf16(weight + c)));
    }
  }
}

/* gate_up: rows of [gate (width) | up (width)]; out = bf16(silu(gate)) * up. */
void silu_mul_bf16(const uint16_t *gate_up, uint16_t *out, int64_t rows, int64_t width) {
#pragma omp parallel for if (rows > 8)
  for (int64_t r = 0; r < rows; r++) {
    const uint16_t *g = gate_up + r * 2 * width, *u = g + width;
    for (int64_t c = 0; c < width; c += 16) {
      __m512 x = load_bf16(g + c);
      __m512 s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
      store_bf16(out + r * width + c, _mm512_mul_ps(round_bf16(s), load_bf16(u + c)));
    }
  }
}
