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

/* HF's rotary on one head: bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)); sin comes signed
   (rope.py), so rotate_half is a roll by half. Needs d % 32 == 0. */
static inline void rotate_head(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, uint16_t *out, int64_t d) {
  int64_t half = d / 2;
  for (int64_t c = 0; c < d; c += 16) {
    __m512 a = round_bf16(_mm512_mul_ps(load_bf16(x + c), load_bf16(cos + c)));
    __m512 b = round_bf16(_mm512_mul_ps(load_bf16(x + (c + half) % d), load_bf16(sin + c)));
    store_bf16(out + c, _mm512_add_ps(a, b));
  }
}

/* qkv: [m][T][qf + 2 kvf][d], this step's projections; cos, sin: [T][d]. Rotates q into
   q_out [T][m * qf][d], and k, then writes k and v straight into their KV rows: rows[0] and
   rows[1] give, for each (token, head group, KV head), its row of `kv` ([rows][d]). */
void rope_write_kv_bf16(const uint16_t *qkv, int64_t T, int64_t m, int64_t qf, int64_t kvf, int64_t d,
                        const uint16_t *cos, const uint16_t *sin, const int64_t *rows, uint16_t *kv,
                        uint16_t *q_out) {
  int64_t width = (qf + 2 * kvf) * d, n = T * m * kvf;
#pragma omp parallel for if (T > 8)
  for (int64_t t = 0; t < T; t++) {
    const uint16_t *ct = cos + t * d, *st = sin + t * d;
    for (int64_t g = 0; g < m; g++) {
      const uint16_t *src = qkv + (g * T + t) * width;
      for (int64_t h = 0; h < qf; h++)
        rotate_head(src + h * d, ct, st, q_out + ((t * m + g) * qf + h) * d, d);
      for (int64_t h = 0; h < kvf; h++) {
        int64_t i = (t * m + g) * kvf + h;
        rotate_head(src + (qf + h) * d, ct, st, kv + rows[i] * d, d);
        const uint16_t *v = src + (qf + kvf + h) * d;
        uint16_t *dst = kv + rows[n + i] * d;
        for (int64_t c = 0; c < d; c += 32) _mm512_storeu_si512(dst + c, _mm512_loadu_si512(v + c));
      }
    }
  }
}
