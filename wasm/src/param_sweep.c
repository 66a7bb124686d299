/*
 * param_sweep: evaluates a 2-D test function on a regular grid and keeps the k lowest values.
 *
 * params = [function_id, x0, x1, nx, y0, y1, ny, k]. Grid index i in [lo, hi) maps to
 * ix = i mod nx, iy = i div nx, x = x0 + ((x1 - x0) * ix) / (nx - 1), likewise y.
 * Functions: 0 Rosenbrock (a = 1, b = 100), 1 Himmelblau, 2 Rastrigin 2-D (A = 10), all
 * evaluated in a fixed operation order with plain IEEE double arithmetic. cos(2 pi x) is a
 * local polynomial (no libm), so every engine computes the same bits.
 *
 * Output (reducer best_k): up to k records (u64 index, f64 value), ascending by value then
 * index. NaN values are never reported.
 */
#include "ccgsc_abi.h"

#define MAX_K 64u
#define TWO_PI 6.283185307179586

typedef struct {
    double value;
    uint64_t index;
} record;

static inline double poly_cos(double t) { /* Taylor series to t^16, |t| <= pi/4 */
    double t2 = t * t;
    double p = 1.0 / 20922789888000.0;
    p = p * t2 - 1.0 / 87178291200.0;
    p = p * t2 + 1.0 / 479001600.0;
    p = p * t2 - 1.0 / 3628800.0;
    p = p * t2 + 1.0 / 40320.0;
    p = p * t2 - 1.0 / 720.0;
    p = p * t2 + 1.0 / 24.0;
    p = p * t2 - 0.5;
    return p * t2 + 1.0;
}

static inline double poly_sin(double t) { /* Taylor series to t^17, |t| <= pi/4 */
    double t2 = t * t;
    double p = 1.0 / 355687428096000.0;
    p = p * t2 - 1.0 / 1307674368000.0;
    p = p * t2 + 1.0 / 6227020800.0;
    p = p * t2 - 1.0 / 39916800.0;
    p = p * t2 + 1.0 / 362880.0;
    p = p * t2 - 1.0 / 5040.0;
    p = p * t2 + 1.0 / 120.0;
    p = p * t2 - 1.0 / 6.0;
    return (p * t2) * t + t;
}

/* cos(2 pi x) with exact argument folding down to [0, 1/8]. */
static double cos2pi(double x) {
    double r = x - __builtin_floor(x); /* [0, 1) */
    if (r > 0.5) r = 1.0 - r;          /* [0, 1/2] */
    double sign = 1.0;
    if (r > 0.25) {
        r = 0.5 - r; /* [0, 1/4] */
        sign = -1.0;
    }
    if (r > 0.125) return sign * poly_sin(TWO_PI * (0.25 - r));
    return sign * poly_cos(TWO_PI * r);
}

static inline double eval(uint32_t fid, double x, double y) {
    if (fid == 0) {
        double a = 1.0 - x, b = y - x * x;
        return a * a + 100.0 * (b * b);
    }
    if (fid == 1) {
        double a = x * x + y - 11.0, b = x + y * y - 7.0;
        return a * a + b * b;
    }
    double fx = x * x - 10.0 * cos2pi(x), fy = y * y - 10.0 * cos2pi(y);
    return (20.0 + fx) + fy;
}

/* Non-negative integer-valued double in [min, max], else -1. */
static int64_t as_count(double v, double min, double max) {
    if (!(v >= min && v <= max)) return -1;
    int64_t i = (int64_t)v;
    return (double)i == v ? i : -1;
}

static inline int is_finite(double v) { return v - v == 0.0; }

static int32_t kernel_run(const ccgsc_task *task, uint8_t *out) {
    if (task->n_params != 8) return CCGSC_ERR_BAD_INPUT;
    const double *p = task->params;
    int64_t fid = as_count(p[0], 0.0, 2.0);
    int64_t nx = as_count(p[3], 2.0, 4294967296.0);
    int64_t ny = as_count(p[6], 2.0, 4294967296.0);
    int64_t k = as_count(p[7], 1.0, (double)MAX_K);
    if (fid < 0 || nx < 0 || ny < 0 || k < 0) return CCGSC_ERR_BAD_INPUT;
    double x0 = p[1], x1 = p[2], y0 = p[4], y1 = p[5];
    if (!is_finite(x0) || !is_finite(x1) || !is_finite(y0) || !is_finite(y1)) return CCGSC_ERR_BAD_INPUT;
    uint64_t unx = (uint64_t)nx, uny = (uint64_t)ny;
    if (uny > (1ull << 53) / unx) return CCGSC_ERR_BAD_INPUT;
    if (task->hi > unx * uny) return CCGSC_ERR_BAD_INPUT;

    record best[MAX_K];
    uint32_t count = 0, kk = (uint32_t)k;
    double dx = x1 - x0, dy = y1 - y0, sx = (double)(unx - 1u), sy = (double)(uny - 1u);
    uint64_t ix = task->lo % unx, iy = task->lo / unx;
    double y = y0 + (dy * (double)iy) / sy;
    for (uint64_t i = task->lo; i < task->hi; i++) {
        double x = x0 + (dx * (double)ix) / sx;
        double v = eval((uint32_t)fid, x, y);
        if (v == v && (count < kk || v < best[count - 1u].value)) {
            uint32_t pos = count < kk ? count++ : kk - 1u;
            /* indices only grow, so on equal values the newcomer goes after */
            while (pos > 0 && best[pos - 1u].value > v) {
                best[pos] = best[pos - 1u];
                pos--;
            }
            best[pos].value = v;
            best[pos].index = i;
        }
        if (++ix == unx) {
            ix = 0;
            iy++;
            y = y0 + (dy * (double)iy) / sy;
        }
    }
    for (uint32_t r = 0; r < count; r++) {
        ccgsc_store_u64(out + 16u * r, best[r].index);
        ccgsc_store_f64(out + 16u * r + 8u, best[r].value);
    }
    return (int32_t)(16u * count);
}
