/*
 * CCGSC kernel ABI v1: shared boilerplate for the built-in kernels.
 *
 * A kernel source file may define CCGSC_OUTPUT_CAPACITY, includes this header and then
 * defines
 *
 *     static int32_t kernel_run(const ccgsc_task *task, uint8_t *out);
 *
 * It gets the four ABI exports (ccgsc_abi_version, ccgsc_input, ccgsc_run, ccgsc_output)
 * from here. The header parses and validates the 32-byte input header, so kernel_run only
 * sees well-formed tasks with lo <= hi; it returns the output length or a negative code.
 *
 * Everything is freestanding: no libc, no libm, no imports. Defining CCGSC_HOST_LIBC
 * compiles the same source natively against the host C library (benchmark references).
 */
#ifndef CCGSC_ABI_H
#define CCGSC_ABI_H

#include <stddef.h>
#include <stdint.h>

#define CCGSC_ABI_VERSION 1
#define CCGSC_HEADER_BYTES 32u
#define CCGSC_MAX_PARAMS 4096u
#define CCGSC_INPUT_CAPACITY (CCGSC_HEADER_BYTES + 8u * CCGSC_MAX_PARAMS)

#define CCGSC_ERR_BAD_INPUT (-1)
#define CCGSC_ERR_OUTPUT_TOO_LARGE (-2)

#ifndef CCGSC_OUTPUT_CAPACITY
#define CCGSC_OUTPUT_CAPACITY 4096u
#endif

#define CCGSC_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

#include "ccgsc_mem.h"

typedef struct {
    uint64_t lo;
    uint64_t hi;
    uint64_t seed;
    uint32_t n_params;
    const double *params;
} ccgsc_task;

static uint8_t ccgsc_in_buf[CCGSC_INPUT_CAPACITY] __attribute__((aligned(16)));
static uint8_t ccgsc_out_buf[CCGSC_OUTPUT_CAPACITY] __attribute__((aligned(16)));
static double ccgsc_params_buf[CCGSC_MAX_PARAMS];

static inline uint64_t ccgsc_load_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* wasm32 is little-endian, like the ABI */
    return v;
}

static inline uint32_t ccgsc_load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void ccgsc_store_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline void ccgsc_store_f64(uint8_t *p, double v) { memcpy(p, &v, 8); }

static int32_t kernel_run(const ccgsc_task *task, uint8_t *out);

CCGSC_EXPORT(ccgsc_abi_version) int32_t ccgsc_abi_version(void) { return CCGSC_ABI_VERSION; }

CCGSC_EXPORT(ccgsc_input) int32_t ccgsc_input(int32_t len) {
    if (len < 0 || (uint32_t)len > CCGSC_INPUT_CAPACITY) return 0;
    return (int32_t)(uintptr_t)ccgsc_in_buf;
}

CCGSC_EXPORT(ccgsc_output) int32_t ccgsc_output(void) { return (int32_t)(uintptr_t)ccgsc_out_buf; }

CCGSC_EXPORT(ccgsc_run) int32_t ccgsc_run(int32_t len) {
    if (len < (int32_t)CCGSC_HEADER_BYTES || (uint32_t)len > CCGSC_INPUT_CAPACITY) {
        return CCGSC_ERR_BAD_INPUT;
    }
    ccgsc_task task;
    task.lo = ccgsc_load_u64(ccgsc_in_buf + 0);
    task.hi = ccgsc_load_u64(ccgsc_in_buf + 8);
    task.seed = ccgsc_load_u64(ccgsc_in_buf + 16);
    task.n_params = ccgsc_load_u32(ccgsc_in_buf + 24);
    uint32_t reserved = ccgsc_load_u32(ccgsc_in_buf + 28);
    if (reserved != 0 || task.lo > task.hi || task.n_params > CCGSC_MAX_PARAMS) {
        return CCGSC_ERR_BAD_INPUT;
    }
    if ((uint32_t)len != CCGSC_HEADER_BYTES + 8u * task.n_params) return CCGSC_ERR_BAD_INPUT;
    memcpy(ccgsc_params_buf, ccgsc_in_buf + CCGSC_HEADER_BYTES, 8u * task.n_params);
    task.params = ccgsc_params_buf;
    return kernel_run(&task, ccgsc_out_buf);
}

#endif /* CCGSC_ABI_H */
