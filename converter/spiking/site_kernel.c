/* Fused CPU loops for the spiking sites (converter/spiking/site_kernel.py loads this through ctypes).

   Each function does, element by element and in the same order, the float arithmetic that the
   reference PyTorch path does with one tensor operation per step, so results are bit-identical
   (built with -ffp-contract=off: no fused multiply-adds). Work is split into row ranges
   [row_begin, row_end) so that Python threads can run ranges in parallel. */

#include <stdint.h>
#include <math.h>
#include <stdlib.h>

/* AVX2 and baseline builds of each function, picked at load time (plain mul/add/div/compare are
   exact in every build, so the choice never changes a result). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SDM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SDM_CLONES
#endif

#define BLOCK 512

/* out[t] = (float)(x[0] + ... + x[t], summed in double) / (t + 1): torch.cumsum(x, 0) / t on
   CPU, which accumulates float sums in double. x, out: [T][n]; elements [begin, end). */
SDM_CLONES
void running_mean(const float *x, float *out, int64_t steps, int64_t n, int64_t begin, int64_t end) {
    double sum[BLOCK];
    for (int64_t start = begin; start < end; start += BLOCK) {
        const int64_t len = end - start < BLOCK ? end - start : BLOCK;
        for (int64_t i = 0; i < len; ++i) sum[i] = 0.0;
        for (int64_t t = 0; t < steps; ++t) {
            const float *in = x + t * n + start;
            float *o = out + t * n + start;
            const float count = (float)(t + 1);
            for (int64_t i = 0; i < len; ++i) {
                sum[i] += (double)in[i];
                o[i] = (float)sum[i] / count;
            }
        }
    }
}

/* Expectation increments, signed or plain IF neurons with soft reset, output shift, in place.

   values: [T][rows][hw], the site's nonlinearity on the running mean; overwritten with the spikes
   (+theta_pos / -theta_neg / 0) plus the per-channel output shift. Row r has channel r % channels.
   Thresholds per channel are threshold * scale (threshold guidance); a neuron starts at rest and
   fires at +-margin * theta (its membrane is stored shifted by the initial charge), exactly as
   SignedIFNode.firing_levels computes them. Signed sites first clamp values to
   [-theta_neg, theta_pos]; unsigned ones neither clamp nor fire negative spikes.
   tsm: T factors or NULL. Returns the number of spikes in the range, -1 if out of memory.
   The unused cases take values that leave every number exactly as it is (infinite bounds,
   factor 1, a NaN level that never compares true), so one branch-free loop serves all. */
SDM_CLONES
int64_t fire_sites(float *restrict values, int64_t steps, int64_t rows, int64_t hw, int64_t channels,
                   const float *threshold_pos, const float *threshold_neg, float scale, float margin,
                   int64_t is_signed, const float *tsm, const float *shift, int64_t begin, int64_t end) {
    float *restrict previous = (float *)malloc(sizeof(float) * 2 * (size_t)hw);
    if (previous == NULL) return -1;
    float *restrict v = previous + hw; /* membranes of one row, (shifted) from rest */
    const float negative_margin = -margin;
    int64_t spikes = 0;
    const int64_t step_stride = rows * hw;
    for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % channels;
        const float tp = threshold_pos[c] * scale, tn = threshold_neg[c] * scale;
        const float fp = margin * tp, sh = shift[c];
        const float fn = is_signed ? negative_margin * tn : NAN, ns = is_signed ? -tn : 0.0f;
        const float lo = is_signed ? -tn : -INFINITY, hi = is_signed ? tp : INFINITY;
        int32_t fired = 0;
        for (int64_t i = 0; i < hw; ++i) { v[i] = 0.0f; previous[i] = 0.0f; }
        for (int64_t t = 0; t < steps; ++t) {
            float *restrict x = values + t * step_stride + r * hw;
            const float count = (float)(t + 1), p = tsm ? tsm[t] : 1.0f;
            for (int64_t i = 0; i < hw; ++i) {
                float value = x[i];
                value = value < lo ? lo : value;
                value = value > hi ? hi : value;
                const float accumulated = value * count;
                const float drive = (accumulated - previous[i]) * p;
                previous[i] = accumulated;
                const float u = drive + v[i];
                float w = u >= fp ? tp : 0.0f;
                w = u <= fn ? ns : w;
                fired += w != 0.0f;
                v[i] = u - w;
                x[i] = w + sh;
            }
        }
        spikes += fired;
    }
    free(previous);
    return spikes;
}

/* One side of an exact neuron at one step: its count for the (non-negative) cumulative drive,
   clip(floor(drive / theta + init), 0, top); before the last step held at what it has emitted while
   `silent` (the schedule's onset) or while it lies at most `margin` units below it (a take-back
   deferred); at most `bound` spikes from what it has emitted (bound <= 0: no limit). Updates
   *emitted and returns the change (this step's spikes). */
static inline float side_step(float drive, float theta, float init, float top, int silent, float margin, float bound,
                              float *emitted) {
    float count = floorf(drive / theta + init);
    count = count < 0.0f ? 0.0f : count;
    count = count > top ? top : count;
    const float fall = *emitted - count;
    if (silent || (fall > 0.0f && fall <= margin)) count = *emitted;
    if (bound > 0.0f) {
        float change = count - *emitted;
        change = change < -bound ? -bound : change;
        change = change > bound ? bound : change;
        count = *emitted + change;
    }
    const float change = count - *emitted;
    *emitted = count;
    return change;
}

/* Spread emission: final counts (on, off) of one element sent as round(t * c / T) units by step t
   (halves up: floor((2 t c + T) / 2T)), written over all T steps of `x` (stride between steps),
   as GradedIFNode's _spread does: theta_pos * dON - theta_neg * dOFF + shift. */
static void spread_units(float *x, int64_t stride, int64_t steps, float tp, float on, float tn, float off, float sh) {
    const int64_t c_on = (int64_t)on, c_off = (int64_t)off;
    int64_t sent_on = 0, sent_off = 0;
    for (int64_t t = 1; t <= steps; ++t) {
        const int64_t by_on = (2 * t * c_on + steps) / (2 * steps), by_off = (2 * t * c_off + steps) / (2 * steps);
        float w = tp * (float)(by_on - sent_on);
        w = w - tn * (float)(by_off - sent_off);
        x[(t - 1) * stride] = w + sh;
        sent_on = by_on;
        sent_off = by_off;
    }
}

/* The exact (graded-spike) neuron: expectation-compensated cumulative drive, ON/OFF counts, their
   per-step changes weighted by the thresholds, output shift, in place.

   values as for fire_sites. The cumulative drive at step t (1-based) is D = t * clamp(value) or,
   with TSM, the running sum (in double, as torch.cumsum on CPU) of p[t] times the increments.
   ON count = clip(floor(max(D, 0) / theta_pos + init), 0, T), OFF the same for -D with theta_neg
   (signed sites only): sdm.core.quantise.side_count. Before the last step the emission schedule
   (GradedIFNode.onset, .margin) holds a side back: silent in its first `onset` steps, take-backs of
   at most `margin` units deferred. With max_payload > 0 each side emits at most that many spikes
   per step and carries the rest. With `spread`, each side is silent until the last step and then
   sends its final count spread over the T steps (spread_units). Written: theta_pos * dON - theta_neg * dOFF + shift. Returns the number of spike units (|dON| + |dOFF| summed), -1 if out of memory. */
SDM_CLONES
int64_t fire_exact(float *restrict values, int64_t steps, int64_t rows, int64_t hw, int64_t channels,
                   const float *threshold_pos, const float *threshold_neg, float scale, float init,
                   int64_t is_signed, const float *tsm, const float *shift, int64_t max_payload,
                   int64_t onset, int64_t margin_units, int64_t spread, int64_t begin, int64_t end) {
    float *restrict scratch = (float *)malloc(sizeof(float) * 3 * (size_t)hw);
    double *restrict sum = (double *)malloc(sizeof(double) * (size_t)hw);
    if (scratch == NULL || sum == NULL) { free(scratch); free(sum); return -1; }
    float *restrict previous = scratch, *restrict on_emitted = scratch + hw, *restrict off_emitted = scratch + 2 * hw;
    const float top = (float)steps, bound = (float)max_payload, margin = (float)margin_units;
    int64_t units = 0;
    const int64_t step_stride = rows * hw;
    for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % channels;
        const float tp = threshold_pos[c] * scale, tn = threshold_neg[c] * scale, sh = shift[c];
        const float lo = is_signed ? -tn : -INFINITY, hi = is_signed ? tp : INFINITY;
        int64_t fired = 0;
        for (int64_t i = 0; i < hw; ++i) { previous[i] = 0.0f; on_emitted[i] = 0.0f; off_emitted[i] = 0.0f; sum[i] = 0.0; }
        for (int64_t t = 0; t < steps; ++t) {
            float *restrict x = values + t * step_stride + r * hw;
            const float count = (float)(t + 1);
            const int last = t == steps - 1, silent = !last && (spread || t < onset);
            const float step_margin = last ? 0.0f : margin;
            for (int64_t i = 0; i < hw; ++i) {
                float value = x[i];
                value = value < lo ? lo : value;
                value = value > hi ? hi : value;
                const float accumulated = value * count;
                float cumulative = accumulated;
                if (tsm) {
                    const float drive = (accumulated - previous[i]) * tsm[t];
                    previous[i] = accumulated;
                    sum[i] += (double)drive;
                    cumulative = (float)sum[i];
                }
                const float positive = cumulative < 0.0f ? 0.0f : cumulative;
                const float d_on = side_step(positive, tp, init, top, silent, step_margin, bound, &on_emitted[i]);
                float w = tp * d_on, d_off = 0.0f;
                fired += (int64_t)fabsf(d_on);
                if (is_signed) {
                    const float negative = -cumulative < 0.0f ? 0.0f : -cumulative;
                    d_off = side_step(negative, tn, init, top, silent, step_margin, bound, &off_emitted[i]);
                    w = w - tn * d_off;
                    fired += (int64_t)fabsf(d_off);
                }
                x[i] = w + sh;
                if (spread && last) spread_units(values + r * hw + i, step_stride, steps, tp, d_on, tn, d_off, sh);
            }
        }
        units += fired;
    }
    free(scratch);
    free(sum);
    return units;
}

/* The closed form of a site (SpikingActivation.twin): its ideal quantiser on a time-averaged
   input. values: [rows][hw], the site's nonlinearity on the mean current (signed sites: after the
   activation); out: theta_pos * ON - theta_neg * OFF, over T, with the counts of
   sdm.core.quantise.signed_counts for the cumulative drive T * clamp(value, -theta_neg, theta_pos)
   (signed) or T * value (unsigned). Same float operations in the same order as the PyTorch path;
   comparisons written so that a NaN passes through as torch's clamps pass it. */
static inline float twin_count(float cumulative, float theta, float init, float top) {
    float ratio = (cumulative < 0.0f ? 0.0f : cumulative) / theta;
    ratio = floorf(ratio + init);
    ratio = ratio < 0.0f ? 0.0f : ratio;
    return ratio > top ? top : ratio;
}

SDM_CLONES
void twin_sites(const float *restrict values, float *restrict out, int64_t rows, int64_t hw, int64_t channels,
                const float *threshold_pos, const float *threshold_neg, float scale, float init, int64_t steps,
                int64_t is_signed, int64_t begin, int64_t end) {
    const float top = (float)steps;
    for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % channels;
        const float tp = threshold_pos[c] * scale, tn = threshold_neg[c] * scale;
        const float *restrict x = values + r * hw;
        float *restrict o = out + r * hw;
        if (is_signed) {
            const float lo = -tn;
            for (int64_t i = 0; i < hw; ++i) {
                float value = x[i];
                value = value < lo ? lo : value;
                value = value > tp ? tp : value;
                const float cumulative = value * top;
                const float on = twin_count(cumulative, tp, init, top);
                const float off = twin_count(-cumulative, tn, init, top);
                o[i] = (tp * on - tn * off) / top;
            }
        } else {
            for (int64_t i = 0; i < hw; ++i) o[i] = tp * twin_count(x[i] * top, tp, init, top) / top;
        }
    }
}
