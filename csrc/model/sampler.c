#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The k-th largest (k from 0) of v[0..n), reordering v: quickselect, O(n) on average. */
static float kth_largest(float *v, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        float pivot = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b)); /* median of three */
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) { float t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return v[k];
    }
    return v[k];
}

typedef struct {
    double p;
    int32_t id;
} candidate;

static int by_probability(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

ec_status ec_sample(float *logits, int64_t vocab, const ec_sampling *p, const int32_t *history, int64_t n_history, double u,
                    int32_t *token)
{
    if (vocab < 1) return ec_fail(EC_ERR_ARG, "sampling from an empty vocabulary");
    if (!(p->repetition_penalty > 0)) return ec_fail(EC_ERR_ARG, "repetition_penalty must be positive, not %g", p->repetition_penalty);
    if (p->do_sample) {
        if (!(p->temperature > 0)) return ec_fail(EC_ERR_ARG, "temperature must be positive when sampling, not %g (use greedy decoding instead)", p->temperature);
        if (!(p->top_p > 0 && p->top_p <= 1)) return ec_fail(EC_ERR_ARG, "top_p must be in (0, 1], not %g", p->top_p);
        if (p->top_k < 0) return ec_fail(EC_ERR_ARG, "top_k must be 0 (off) or positive, not %lld", (long long)p->top_k);
        if (!(u >= 0 && u < 1)) return ec_fail(EC_ERR_ARG, "the random draw must be in [0, 1), not %g", u);
    }

    /* Repetition penalty, once per distinct token (transformers gathers and scatters the same value). */
    if (p->repetition_penalty != 1.0f && n_history > 0) {
        unsigned char *seen = calloc((size_t)vocab, 1);
        if (!seen) return ec_fail(EC_ERR_OOM, "out of host memory");
        for (int64_t i = 0; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= vocab || seen[id]) continue;
            seen[id] = 1;
            float l = logits[id];
            logits[id] = l < 0 ? l * p->repetition_penalty : l / p->repetition_penalty;
        }
        free(seen);
    }

    if (!p->do_sample) {
        int64_t best = -1;
        for (int64_t i = 0; i < vocab; i++)
            if (logits[i] == logits[i] && (best < 0 || logits[i] > logits[best])) best = i;
        if (best < 0) return ec_fail(EC_ERR_ARG, "every logit is NaN");
        *token = (int32_t)best;
        return EC_OK;
    }

    if (p->temperature != 1.0f)
        for (int64_t i = 0; i < vocab; i++) logits[i] /= p->temperature;

    /* The candidates: finite logits (NaN and -inf never win a draw). */
    candidate *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return ec_fail(EC_ERR_OOM, "out of host memory");
    int64_t n = 0;
    for (int64_t i = 0; i < vocab; i++)
        if (logits[i] > -INFINITY && logits[i] < INFINITY) c[n++] = (candidate){logits[i], (int32_t)i};
    if (n == 0) { free(c); return ec_fail(EC_ERR_ARG, "no logit is finite"); }

    /* Top-k: keep the logits at least as large as the k-th largest (ties stay, as in transformers). */
    if (p->top_k > 0 && p->top_k < n) {
        float *v = malloc((size_t)n * sizeof *v);
        if (!v) { free(c); return ec_fail(EC_ERR_OOM, "out of host memory"); }
        for (int64_t i = 0; i < n; i++) v[i] = (float)c[i].p;
        float kth = kth_largest(v, n, p->top_k - 1);
        free(v);
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if ((float)c[i].p >= kth) c[m++] = c[i];
        n = m;
    }

    /* Softmax (in double; only ratios matter for the draw, so it stays unnormalized). */
    double top = c[0].p, total = 0;
    for (int64_t i = 1; i < n; i++) top = c[i].p > top ? c[i].p : top;
    for (int64_t i = 0; i < n; i++) { c[i].p = exp(c[i].p - top); total += c[i].p; }

    /* Top-p: the most probable tokens, in order, while the mass before each is under top_p (so at
     * least one). Only the tokens above a threshold are sorted, lowering it until they hold top_p:
     * the kept set then lies among them. */
    if (p->top_p < 1.0f) {
        double need = p->top_p * total, threshold = 1e-4;
        int64_t m;
        for (;;) {
            double mass = 0;
            m = 0;
            for (int64_t i = 0; i < n; i++)
                if (c[i].p >= threshold) { candidate t = c[m]; c[m] = c[i]; c[i] = t; mass += c[m].p; m++; }
            if (mass >= need || threshold == 0) break;
            threshold = threshold > 1e-300 ? threshold * 1e-4 : 0;
        }
        qsort(c, (size_t)m, sizeof *c, by_probability);
        int64_t kept = 0;
        double cum = 0;
        while (kept < m && cum < need) cum += c[kept++].p;
        n = kept;
        total = cum;
    }

    double target = u * total, acc = 0;
    int32_t chosen = c[n - 1].id;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (acc > target) { chosen = c[i].id; break; }
    }
    free(c);
    *token = chosen;
    return EC_OK;
}
