#include "bf16_common.h"

/* y[M, N] = x[M, K] @ W^T (+ bias): bf16 in and out, fp32 accumulation, AVX512-BF16.

   W is packed as [N/16][K/2][16][2]: each 64-byte row holds 2 inputs of 16 outputs, the operand
   order of vdpbf16ps, so the inner loop is one load and one dot product per 16 outputs. Threads
   (OpenMP, the runtime torch uses) split the outputs; a tile of up to MT rows of x by 32 outputs
   keeps its accumulators in registers and its 32 weight rows in L1 while it walks K. */
#define MT 8

static inline __attribute__((always_inline)) void tile(
    const uint16_t *x, int64_t ldx, const uint16_t *w0, const uint16_t *w1, const int64_t *wk, int two,
    const uint16_t *b0, const uint16_t *b1, uint16_t *y, int64_t ldy, const int m, int64_t K2) {
  __m512 acc0[MT], acc1[MT];
  __m512 z0 = _mm512_setzero_ps(), z1 = _mm512_setzero_ps();
  if (b0) z0 = load_bf16(b0);
  if (b1 && two) z1 = load_bf16(b1);
  for (int i = 0; i < m; i++) { acc0[i] = z0; acc1[i] = z1; }
  for (int64_t k = 0; k < K2; k++) {
    int64_t o = wk[k];
    __m512bh wa = (__m512bh)_mm512_loadu_si512(w0 + o);
    if (two) {
      __m512bh wb = (__m512bh)_mm512_loadu_si512(w1 + o);
      for (int i = 0; i < m; i++) {
        __m512bh a = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x + i * ldx + 2 * k));
        acc0[i] = _mm512_dpbf16_ps(acc0[i], a, wa);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], a, wb);
      }
    } else {
      for (int i = 0; i < m; i++) {
        __m512bh a = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x + i * ldx + 2 * k));
        acc0[i] = _mm512_dpbf16_ps(acc0[i], a, wa);
      }
    }
  }
  for (int i = 0; i < m; i++) {
    store_bf16(y + i * ldy, acc0[i]);
    if (two) store_bf16(y + i * ldy + 16, acc1[i]);
  }
}

void gemm_bf16_packed(const uint16_t *x, int64_t ldx, const uint16_t *w, const int64_t *wn, const int64_t *wk,
                      const uint16_t *bias, uint16_t *y, int64_t ldy, int64_t M, int64_t N, int64_t K) {
  int64_t K2 = K / 2, nb = N / 16, pairs = (nb + 1) / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < pairs; p++) {
    int64_t n0 = p * 2;
    int two = n0 + 1 < nb;
    const uint16_t *w0 = w + wn[n0], *w1 = two ? w + wn[n0 + 1] : w0;
    const uint16_t *b0 = bias ? bias + n0 * 16 : 0, *b1 = bias ? bias + n0 * 16 + 16 : 0;
    for (int64_t m0 = 0; m0 < M; m0 += MT) {
      int m = M - m0 < MT ? (int)(M - m0) : MT;
      const uint16_t *xm = x + m0 * ldx;
      uint16_t *ym = y + m0 * ldy + n0 * 16;
      switch (m) {
        case 1: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 1, K2); break;
        case 2: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 2, K2); break;
        case 3: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 3, K2); break;
        case 4: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 4, K2); break;
        case 5: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 5, K2); break;
        case 6: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 6, K2); break;
        case 7: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 7, K2); break;
        default: tile(xm, ldx, w0, w1, wk, two, b0, b1, ym, ldy, 8, K2); break;
      }
    }
  }
}
