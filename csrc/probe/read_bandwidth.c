/* A STREAM-style read probe: the buffer, far larger than the caches, is split among the threads; each
 * sums its part with four independent 16-byte accumulators (enough loads in flight to saturate memory
 * rather than wait on one chain of adds). The sums are kept, so the reads cannot be optimized away.
 * The threads start together on a flag, after all of them exist, and the clock runs until the last
 * one is done. */
#include "probe/read_bandwidth.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t v2u64 __attribute__((vector_size(16)));

typedef struct {
    const v2u64 *data;
    size_t n;          /* 16-byte words */
    const int *go;     /* 1: start, -1: give up (another thread could not be created) */
    uint64_t sum;
} part;

static void *read_part(void *arg)
{
    part *p = arg;
    int go;
    while ((go = __atomic_load_n(p->go, __ATOMIC_ACQUIRE)) == 0) {}
    if (go < 0) return NULL;
    v2u64 a = {0, 0}, b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 4 <= p->n; i += 4) {
        a += p->data[i];
        b += p->data[i + 1];
        c += p->data[i + 2];
        d += p->data[i + 3];
    }
    for (; i < p->n; i++) a += p->data[i];
    v2u64 s = a + b + c + d;
    p->sum = s[0] + s[1];
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ec_read_bandwidth(size_t bytes, int threads, int reps)
{
    if (threads < 1 || threads > 64 || reps < 1 || bytes < 4096) return 0.0;
    size_t words = bytes / 16;
    v2u64 *buf = aligned_alloc(64, words * 16);
    if (!buf) return 0.0;
    memset(buf, 1, words * 16); /* every page touched first: the timed reads hit memory, not page faults */
    pthread_t tid[64];
    part parts[64];
    double best = 0.0;
    volatile uint64_t keep = 0;
    for (int r = 0; r < reps; r++) {
        int go = 0, started = 0;
        for (int t = 0; t < threads; t++) {
            size_t first = words * (size_t)t / (size_t)threads, last = words * (size_t)(t + 1) / (size_t)threads;
            parts[t] = (part){buf + first, last - first, &go, 0};
            if (pthread_create(&tid[t], NULL, read_part, &parts[t])) break;
            started++;
        }
        double t0 = now();
        __atomic_store_n(&go, started == threads ? 1 : -1, __ATOMIC_RELEASE);
        for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
        double dt = now() - t0;
        if (started < threads) break;
        for (int t = 0; t < threads; t++) keep += parts[t].sum;
        if (dt > 0 && (double)(words * 16) / dt > best) best = (double)(words * 16) / dt;
    }
    free(buf);
    return best;
}
