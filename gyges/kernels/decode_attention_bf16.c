#include <stdlib.h>

#include "bf16_common.h"

/* Decode attention straight from header-centric KV pages: bf16 in and out, fp32 inside.

   One task per (sequence, KV head): its query heads share each K and V row as it is read from
   the page, scores stay in fp32 (no bf16 rounding before the softmax), and nothing is gathered
   into a temporary: the page table is followed block by block. */

#define MAX_ACC 4096 /* group * head_dim: output accumulators of one task */
#define MAX_GROUP 64

/* q: [nd, Hq, d] (sequence stride q_stride, head stride d); cache: one layer of the KV pages,
   page_stride elements apart, each [2][heads][block][d]; tables: [nd][m][max_blocks] page ids;
   lens: context length of each sequence including its new token; window: 0 or the sliding window;
   kv_heads: the first kv_heads of the m * heads KV heads are attended (the rest is padding);
   out: [nd, Hq, d] contiguous. Query head kvh * group + i attends with KV head kvh = j * heads + h. */
void decode_attention_bf16(const uint16_t *q, int64_t q_stride, const uint16_t *cache, int64_t page_stride,
                           int64_t heads, int64_t block, int64_t d, const int64_t *tables, int64_t m,
                           int64_t max_blocks, const int64_t *lens, int64_t window, int64_t kv_heads, int64_t group,
                           float scale, uint16_t *out, int64_t nd) {
  int64_t tasks = nd * kv_heads;
  int64_t head_elems = block * d, kv_elems = heads * head_elems;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; task++) {
    int64_t s = task / kv_heads, kvh = task % kv_heads, j = kvh / heads, h = kvh % heads;
    int64_t len = lens[s], start = window > 0 && len > window ? len - window : 0, n = len - start;
    const int64_t *table = tables + (s * m + j) * max_blocks;
    const uint16_t *qs = q + s * q_stride + kvh * group * d;
    float *scores = malloc(sizeof(float) * group * n);
    float acc[MAX_ACC];
    float maxes[MAX_GROUP], sums[MAX_GROUP];
    for (int64_t i = 0; i < group; i++) maxes[i] = -3.0e38f;
    for (int64_t t = start; t < len; t++) {
      const uint16_t *k = cache + table[t / block] * page_stride + h * head_elems + (t % block) * d;
      for (int64_t i = 0; i < group; i++) {
        __m512 a = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c += 32)
          a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(qs + i * d + c), (__m512bh)_mm512_loadu_si512(k + c));
        float sc = _mm512_reduce_add_ps(a) * scale;
        scores[i * n + t - start] = sc;
        if (sc > maxes[i]) maxes[i] = sc;
      }
    }
    for (int64_t i = 0; i < group; i++) {
      float *row = scores + i * n;
      __m512 mx = _mm512_set1_ps(maxes[i]), sum = _mm512_setzero_ps();
      int64_t t = 0;
      for (; t + 16 <= n; t += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + t), mx));
        _mm512_storeu_ps(row + t, e);
        sum = _mm512_add_ps(sum, e);
      }
      if (t < n) {
        __mmask16 mask = (__mmask16)((1u << (n - t)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + t), mx));
        e = _mm512_maskz_mov_ps(mask, e);
        _mm512_mask_storeu_ps(row + t, mask, e);
        sum = _mm512_add_ps(sum, e);
      }
      sums[i] = _mm512_reduce_add_ps(sum);
    }
    for (int64_t x = 0; x < group * d; x++) acc[x] = 0.0f;
    for (int64_t t = start; t < len; t++) {
      const uint16_t *v = cache + table[t / block] * page_stride + kv_elems + h * head_elems + (t % block) * d;
      for (int64_t c = 0; c < d; c += 16) {
        __m512 vc = load_bf16(v + c);
        for (int64_t i = 0; i < group; i++) {
          __m512 p = _mm512_set1_ps(scores[i * n + t - start]);
          _mm512_storeu_ps(acc + i * d + c, _mm512_fmadd_ps(p, vc, _mm512_loadu_ps(acc + i * d + c)));
        }
      }
    }
    uint16_t *o = out + (s * kv_heads + kvh) * group * d;
    for (int64_t i = 0; i < group; i++) {
      __m512 inv = _mm512_set1_ps(1.0f / sums[i]);
      for (int64_t c = 0; c < d; c += 16)
        store_bf16(o + i * d + c, _mm512_mul_ps(_mm512_loadu_ps(acc + i * d + c), inv));
    }
    free(scores);
  }
}
