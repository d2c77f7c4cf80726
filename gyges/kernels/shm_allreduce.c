#include <sched.h>
#include <string.h>
#include <time.h>

#include "bf16_common.h"

/* All-reduce (sum) among the processes of one host through a shared segment.

   Segment: `size` counters, one cache line each, then two slot sets of size * slot_bytes. A call
   with sequence number seq copies x into this rank's slot of set seq % 2, publishes seq, waits
   until every rank has published seq, and sums all slots in rank order into x: every rank gets
   the same bits. A set is written again only at seq + 2, after every rank published seq + 1,
   which each does only once it has finished reading set seq % 2. */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Returns 0, or -1 if a peer did not arrive within timeout_s. */
int shm_all_reduce(uint8_t *shm, int64_t size, int64_t rank, int64_t slot_bytes, int64_t seq, void *x,
                   int64_t n, int64_t is_bf16, double timeout_s) {
  int64_t *counters = (int64_t *)shm;
  uint8_t *set = shm + size * 64 + (seq & 1) * size * slot_bytes;
  int64_t nbytes = n * (is_bf16 ? 2 : 4);
  memcpy(set + rank * slot_bytes, x, nbytes);
  __atomic_store_n(&counters[rank * 8], seq, __ATOMIC_RELEASE);
  double start = 0;
  for (int64_t r = 0; r < size; r++) {
    for (int64_t spins = 0; __atomic_load_n(&counters[r * 8], __ATOMIC_ACQUIRE) < seq; spins++) {
      if (spins < 64) {
        _mm_pause();
        continue;
      }
      sched_yield(); /* with more processes than cores, the peer may need this core */
      if ((spins & 1023) == 0) {
        if (start == 0) start = now_s();
        else if (now_s() - start > timeout_s) return -1;
      }
    }
  }
  /* 16 elements at a time; the last, partial chunk through a mask */
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 mask = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t r = 0; r < size; r++) {
      const uint8_t *slot = set + r * slot_bytes;
      __m512 v = is_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
                               _mm256_maskz_loadu_epi16(mask, (const uint16_t *)slot + i)), 16))
                         : _mm512_maskz_loadu_ps(mask, (const float *)slot + i);
      acc = r ? _mm512_add_ps(acc, v) : v;
    }
    if (is_bf16) _mm256_mask_storeu_epi16((uint16_t *)x + i, mask, (__m256i)_mm512_cvtneps_pbh(acc));
    else _mm512_mask_storeu_ps((float *)x + i, mask, acc);
  }
  return 0;
}
