/*
 * analytics: one contributor's summary vector for a federated analytics query (ABI v3,
 * docs/kernel-abi.md "ABI version 3").
 *
 *   input  = 32-byte header | c column specs of 16 bytes | X f32[n x f], row-major
 *   output = 32-byte metrics | f32[d], per column [count, sum, sum of squares, bins...]
 *
 * Per requested column (feature index, bins b, bounds lo < hi) over the first min(n, m) rows:
 * a non-finite value is missing (not counted); a finite one is clipped to [lo, hi] and shifted
 * by lo, t = clip(x) - lo in [0, hi - lo]; the column adds count, sum t, sum t^2 and the count
 * of t in each of b equal-width bins (the last bin is closed). Sums run in f64 in row order and
 * are rounded to f32 once, so the vector is bit-identical in every engine and the numpy
 * reference (jobs/analytics/vector.py) reproduces it exactly. The vector is a sum over rows, so
 * the vectors of many contributors add up to the vector of the union of their rows.
 */
#include <stddef.h>
#include <stdint.h>

#include "ccgsc_mem.h"

#define CCGSC_ABI_VERSION 3
#define HEADER_BYTES 32u
#define COLUMN_BYTES 16u
#define METRICS_BYTES 32u
#define OP_SUMMARIZE 1u
#define MAX_COLUMNS 256u
#define MAX_BINS 1024u
#define MAX_ROWS 16777216u /* counts stay exact in f32 */
#define PAGE_BYTES 65536u

#define CCGSC_ERR_BAD_INPUT (-1)
#define CCGSC_ERR_OUT_OF_MEMORY (-3)

#define CCGSC_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

extern unsigned char __heap_base;

static uint32_t input_len;
static uintptr_t output_at;

static uintptr_t align16(uintptr_t p) { return (p + 15u) & ~(uintptr_t)15u; }

static int reserve(uintptr_t end) {
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * PAGE_BYTES;
    if (end <= have) return 1;
    uintptr_t pages = (end - have + PAGE_BYTES - 1u) / PAGE_BYTES;
    return __builtin_wasm_memory_grow(0, pages) != (size_t)-1;
}

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static float load_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static int finite_f32(float v) { return v == v && v - v == 0.0f; }

static uint8_t *input_base(void) { return (uint8_t *)align16((uintptr_t)&__heap_base); }

CCGSC_EXPORT(ccgsc_abi_version) int32_t ccgsc_abi_version(void) { return CCGSC_ABI_VERSION; }

/* Where the host writes ``len`` input bytes (memory grown to hold them); 0 if it cannot. */
CCGSC_EXPORT(ccgsc_input) int32_t ccgsc_input(int32_t len) {
    if (len < 0) return 0;
    uintptr_t base = (uintptr_t)input_base();
    if (!reserve(base + (uintptr_t)len)) return 0;
    input_len = (uint32_t)len;
    return (int32_t)base;
}

CCGSC_EXPORT(ccgsc_output) int32_t ccgsc_output(void) { return (int32_t)output_at; }

typedef struct {
    uint32_t feature;
    uint32_t bins;
    float lo;
    float hi;
} column_spec;

CCGSC_EXPORT(ccgsc_run) int32_t ccgsc_run(int32_t len) {
    const uint8_t *in = input_base();
    if (len < (int32_t)HEADER_BYTES || (uint32_t)len != input_len) return CCGSC_ERR_BAD_INPUT;
    uint32_t op = load_u32(in + 0), n = load_u32(in + 4), f = load_u32(in + 8);
    uint32_t c = load_u32(in + 12), m = load_u32(in + 16);
    if (op != OP_SUMMARIZE || load_u32(in + 20) || load_u32(in + 24) || load_u32(in + 28)) {
        return CCGSC_ERR_BAD_INPUT;
    }
    if (c == 0 || c > MAX_COLUMNS || f == 0 || n > MAX_ROWS) return CCGSC_ERR_BAD_INPUT;
    uint64_t expected = HEADER_BYTES + (uint64_t)COLUMN_BYTES * c + 4ull * n * f;
    if ((uint64_t)(uint32_t)len != expected) return CCGSC_ERR_BAD_INPUT;
    uint32_t d = 0;
    for (uint32_t j = 0; j < c; j++) {
        const uint8_t *s = in + HEADER_BYTES + COLUMN_BYTES * j;
        uint32_t feature = load_u32(s), bins = load_u32(s + 4);
        float lo = load_f32(s + 8), hi = load_f32(s + 12);
        if (feature >= f || bins == 0 || bins > MAX_BINS) return CCGSC_ERR_BAD_INPUT;
        if (!finite_f32(lo) || !finite_f32(hi) || !(lo < hi)) return CCGSC_ERR_BAD_INPUT;
        d += 3u + bins;
    }
    uint32_t rows = (m != 0 && m < n) ? m : n;
    /* Scratch after the input: specs, f64 sums and u32 counts; then the output. */
    uintptr_t at = align16((uintptr_t)in + (uint32_t)len);
    column_spec *spec = (column_spec *)at;
    at = align16(at + sizeof(column_spec) * c);
    double *sums = (double *)at; /* per column: sum t, sum t^2 */
    at = align16(at + 16u * c);
    uint32_t *counts = (uint32_t *)at; /* per column: count, then its bins */
    uintptr_t counts_bytes = 4u * (uintptr_t)(c + (d - 3u * c));
    at = align16(at + counts_bytes);
    output_at = at;
    uintptr_t output_bytes = METRICS_BYTES + 4u * (uintptr_t)d;
    if (!reserve(at + output_bytes)) return CCGSC_ERR_OUT_OF_MEMORY;
    memset(sums, 0, 16u * c);
    memset(counts, 0, counts_bytes);
    for (uint32_t j = 0; j < c; j++) {
        const uint8_t *s = in + HEADER_BYTES + COLUMN_BYTES * j;
        spec[j].feature = load_u32(s);
        spec[j].bins = load_u32(s + 4);
        spec[j].lo = load_f32(s + 8);
        spec[j].hi = load_f32(s + 12);
    }
    const uint8_t *x = in + HEADER_BYTES + COLUMN_BYTES * c;
    for (uint32_t r = 0; r < rows; r++) {
        const uint8_t *row = x + 4ull * r * f;
        uint32_t bin_at = c;
        for (uint32_t j = 0; j < c; j++) {
            float v = load_f32(row + 4u * spec[j].feature);
            uint32_t bins = spec[j].bins;
            if (finite_f32(v)) {
                float clipped = v < spec[j].lo ? spec[j].lo : (v > spec[j].hi ? spec[j].hi : v);
                double t = (double)clipped - (double)spec[j].lo;
                double width = (double)spec[j].hi - (double)spec[j].lo;
                double scaled = t / width * (double)bins;
                uint32_t k = scaled >= (double)bins ? bins - 1u : (uint32_t)scaled;
                counts[j] += 1u;
                sums[2u * j] += t;
                sums[2u * j + 1u] += t * t;
                counts[bin_at + k] += 1u;
            }
            bin_at += bins;
        }
    }
    uint8_t *out = (uint8_t *)output_at;
    float *vector = (float *)(out + METRICS_BYTES);
    uint32_t i = 0, bin_at = c;
    double squares = 0.0;
    for (uint32_t j = 0; j < c; j++) {
        vector[i++] = (float)counts[j];
        vector[i++] = (float)sums[2u * j];
        vector[i++] = (float)sums[2u * j + 1u];
        for (uint32_t k = 0; k < spec[j].bins; k++) vector[i++] = (float)counts[bin_at + k];
        bin_at += spec[j].bins;
    }
    for (uint32_t k = 0; k < d; k++) squares += (double)vector[k] * (double)vector[k];
    double norm = __builtin_sqrt(squares), zero = 0.0;
    uint32_t status = 0, correct = 0;
    memcpy(out + 0, &status, 4);
    memcpy(out + 4, &rows, 4);
    memcpy(out + 8, &zero, 8);
    memcpy(out + 16, &correct, 4);
    memcpy(out + 20, &d, 4);
    memcpy(out + 24, &norm, 8);
    return (int32_t)output_bytes;
}
