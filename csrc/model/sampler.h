/* Choosing the next token from a row of logits, on the host: the logits are on the host anyway
 * (a row is a memcpy on integrated and CPU devices, and a few hundred kilobytes over PCIe otherwise),
 * and a whole vocabulary is filtered and sampled here in well under a millisecond.
 *
 * The steps are transformers' logits processors, in its order: repetition penalty, then (sampling
 * only) temperature, top-k, top-p, and a draw from the softmax of what remains. */
#ifndef EC_SAMPLER_H
#define EC_SAMPLER_H

#include <stdint.h>

#include "errors.h"

typedef struct {
    int do_sample;            /* 0: greedy (the first largest logit after the penalty) */
    float temperature;        /* > 0 when sampling */
    int64_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float repetition_penalty; /* 1: off; logits of tokens in `history` are divided by it (multiplied when negative) */
} ec_sampling;

/* logits [vocab] is modified in place. history: the token ids the penalty applies to (prompt and
 * generated so far). u: a uniform random number in [0, 1) that makes the draw (the caller's seeded
 * generator gives reproducible runs). */
ec_status ec_sample(float *logits, int64_t vocab, const ec_sampling *p, const int32_t *history, int64_t n_history, double u,
                    int32_t *token);

#endif
