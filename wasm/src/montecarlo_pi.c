/*
 * montecarlo_pi: counts random points of the unit square that fall inside the quarter disc.
 *
 * Sample i is fully determined by (seed, i) through a counter-based SplitMix64 generator:
 *     key = mix64(seed ^ 0x6A09E667F3BCC909)
 *     z   = mix64(key + i * 0x9E3779B97F4A7C15)          (all arithmetic mod 2^64)
 *     x   = z >> 33,  y = z & 0x7FFFFFFF                 (two 31-bit integers)
 *     inside  <=>  x*x + y*y < 2^62
 * where mix64 is the SplitMix64 finaliser. The SIMD128 loop and the scalar tail compute the
 * same integers, so the count does not depend on which path ran.
 *
 * Output (reducer sum_u64): two u64, [inside, samples].
 */
#include <wasm_simd128.h>

#include "ccgsc_abi.h"

#define GAMMA 0x9E3779B97F4A7C15ull
#define MIX1 0xBF58476D1CE4E5B9ull
#define MIX2 0x94D049BB133111EBull
#define SEED_SALT 0x6A09E667F3BCC909ull

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

/* 1 if sample z lands outside the quarter disc, else 0. */
static inline uint64_t outside_scalar(uint64_t z) {
    uint64_t x = z >> 33, y = z & 0x7FFFFFFFull;
    return (x * x + y * y) >> 62;
}

static inline v128_t mix64x2(v128_t z) {
    const v128_t m1 = wasm_i64x2_splat((int64_t)MIX1), m2 = wasm_i64x2_splat((int64_t)MIX2);
    z = wasm_i64x2_mul(wasm_v128_xor(z, wasm_u64x2_shr(z, 30)), m1);
    z = wasm_i64x2_mul(wasm_v128_xor(z, wasm_u64x2_shr(z, 27)), m2);
    return wasm_v128_xor(z, wasm_u64x2_shr(z, 31));
}

static inline v128_t outside_x2(v128_t z) {
    const v128_t low31 = wasm_i64x2_splat(0x7FFFFFFF);
    v128_t x = wasm_u64x2_shr(z, 33), y = wasm_v128_and(z, low31);
    v128_t r = wasm_i64x2_add(wasm_i64x2_mul(x, x), wasm_i64x2_mul(y, y));
    return wasm_u64x2_shr(r, 62);
}

static uint64_t count_outside(uint64_t key, uint64_t lo, uint64_t hi) {
    uint64_t outside = 0, i = lo;
    if (hi - lo >= 4u) {
        const v128_t step = wasm_i64x2_splat((int64_t)(4u * GAMMA));
        uint64_t c0 = key + i * GAMMA;
        v128_t ca = wasm_i64x2_make((int64_t)c0, (int64_t)(c0 + GAMMA));
        v128_t cb = wasm_i64x2_make((int64_t)(c0 + 2u * GAMMA), (int64_t)(c0 + 3u * GAMMA));
        v128_t acc = wasm_i64x2_splat(0);
        uint64_t blocks = (hi - lo) / 4u;
        for (uint64_t b = 0; b < blocks; b++) {
            acc = wasm_i64x2_add(acc, outside_x2(mix64x2(ca)));
            acc = wasm_i64x2_add(acc, outside_x2(mix64x2(cb)));
            ca = wasm_i64x2_add(ca, step);
            cb = wasm_i64x2_add(cb, step);
        }
        outside = (uint64_t)wasm_i64x2_extract_lane(acc, 0) + (uint64_t)wasm_i64x2_extract_lane(acc, 1);
        i = lo + 4u * blocks;
    }
    for (; i < hi; i++) outside += outside_scalar(mix64(key + i * GAMMA));
    return outside;
}

static int32_t kernel_run(const ccgsc_task *task, uint8_t *out) {
    if (task->n_params != 0) return CCGSC_ERR_BAD_INPUT;
    uint64_t samples = task->hi - task->lo;
    uint64_t key = mix64(task->seed ^ SEED_SALT);
    uint64_t inside = samples - count_outside(key, task->lo, task->hi);
    ccgsc_store_u64(out, inside);
    ccgsc_store_u64(out + 8, samples);
    return 16;
}
