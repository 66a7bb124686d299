/*
 * CCGSC kernel ABI v2: shared code for the training kernels (logreg, mlp, cnn).
 *
 * One ccgsc_run call is one local epoch (op TRAIN) or one pass of evaluation (op EVAL) over the
 * samples in the input. The layout is specified in docs/kernel-abi.md ("ABI version 2"):
 *
 *   input  = 96-byte header | weights f32 x d | [control f32 x d] | [momentum f32 x d]
 *            | X (f32 or u8, n x features) | Y (u32 x n), every section 16-byte aligned
 *   output = 32-byte metrics | [update f32 x d] | [momentum f32 x d]
 *
 * A kernel source defines MODEL_INPUT_CAPACITY, includes this header and then defines
 *
 *   static int32_t model_setup(const train_task *t);   validate sizes, allocate scratch
 *   static void model_batch(const float *w, const float *x, const uint32_t *y, uint32_t bs,
 *                           float *grad, double *loss_sum, uint32_t *correct);
 *
 * model_batch runs the forward pass on bs contiguous f32 samples, adds each sample's loss to
 * *loss_sum (in sample order) and counts correct predictions; when grad is not NULL it also
 * writes the mean gradient over the batch (every element, no accumulation across calls).
 *
 * Determinism: plain IEEE f32 arithmetic, no FMA contraction (-ffp-contract=off and wasm has
 * no non-relaxed FMA), every sum in a fixed order, an integer RNG, our own expf/logf. The
 * same input bytes give the same output bytes in every WebAssembly engine.
 *
 * Memory: a bump allocator over the linear memory above __heap_base, reset at every call and
 * grown with memory.grow up to the module's declared maximum.
 */
#ifndef CCGSC_TRAIN_H
#define CCGSC_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <wasm_simd128.h>

#define CCGSC_ABI_VERSION 2
#define CCGSC_HEADER_BYTES 96u
#define CCGSC_METRICS_BYTES 32u
#define CCGSC_MAX_SIZES 8u

#define OP_TRAIN 1u
#define OP_EVAL 2u

#define FLAG_X_U8 1u
#define FLAG_CONTROL 2u
#define FLAG_MOMENTUM_IN 4u
#define FLAG_MOMENTUM_OUT 8u
#define FLAGS_KNOWN 15u

#define STATUS_OK 0u
#define STATUS_NON_FINITE_RESULT 1u
#define STATUS_NON_FINITE_INPUT 2u

#define CCGSC_ERR_BAD_INPUT (-1)
#define CCGSC_ERR_OUTPUT_TOO_LARGE (-2)
#define CCGSC_ERR_OUT_OF_MEMORY (-3)

#define CCGSC_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

#include "ccgsc_mem.h"

/* ---- memory ------------------------------------------------------------------------------ */

extern unsigned char __heap_base;

#define PAGE_BYTES 65536u

static uintptr_t heap_top; /* next free byte of the current call */
static int heap_failed;

static uintptr_t align16(uintptr_t p) { return (p + 15u) & ~(uintptr_t)15u; }

static int heap_reserve(uintptr_t end) {
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * PAGE_BYTES;
    if (end <= have) return 1;
    uintptr_t pages = (end - have + PAGE_BYTES - 1u) / PAGE_BYTES;
    return __builtin_wasm_memory_grow(0, pages) != (size_t)-1;
}

/*
 * Zeroed, 16-byte aligned scratch; NULL (and heap_failed) when memory cannot grow. Sizes are
 * 64-bit so that a product such as batch x width cannot wrap around wasm32's size_t.
 */
static void *heap_alloc(uint64_t bytes) {
    uintptr_t start = align16(heap_top);
    if (bytes > 0xFFFFFFF0u - (uint64_t)start || !heap_reserve(start + (uintptr_t)bytes)) {
        heap_failed = 1;
        return NULL;
    }
    heap_top = start + (uintptr_t)bytes;
    memset((void *)start, 0, (size_t)bytes);
    return (void *)start;
}

/* ---- deterministic maths ----------------------------------------------------------------- */

static inline uint32_t f32_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}

static inline float bits_f32(uint32_t b) {
    float x;
    memcpy(&x, &b, 4);
    return x;
}

static inline int f32_finite(float x) { return (f32_bits(x) & 0x7F800000u) != 0x7F800000u; }

static int all_finite(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) bad |= (uint32_t)((f32_bits(x[i]) & 0x7F800000u) == 0x7F800000u);
    return !bad;
}

/* exp(x) for x <= 0 (softmax after subtracting the max); about 2 ulp. */
static float det_expf(float x) {
    if (x < -87.0f) return 0.0f;
    float n = __builtin_floorf(x * 1.44269504f + 0.5f);
    float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f +
              r * (0.00833333377f + r * 0.00138888892f)))));
    int32_t e = (int32_t)n + 127;
    if (e <= 0) return 0.0f;
    return p * bits_f32((uint32_t)e << 23);
}

/* log(x) for finite x > 0. */
static float det_logf(float x) {
    uint32_t b = f32_bits(x);
    int32_t e = (int32_t)((b >> 23) & 0xFFu) - 127;
    float m = bits_f32((b & 0x007FFFFFu) | 0x3F800000u); /* [1, 2) */
    if (m > 1.41421356f) {
        m = m * 0.5f;
        e += 1;
    }
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float poly = s2 * (0.333333343f + s2 * (0.200000003f + s2 * (0.142857149f + s2 * 0.111111112f)));
    return (float)e * 0.693147182f + (2.0f * s + 2.0f * s * poly);
}

/* ---- integer RNG: SplitMix64 stream seeded by the task ----------------------------------- */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Fisher-Yates: for i = n-1 .. 1, j = ((next >> 32) * (i + 1)) >> 32, swap(i, j). */
static void shuffle(uint32_t *perm, uint32_t n, uint64_t seed) {
    uint64_t state = seed;
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    for (uint32_t i = n; i-- > 1;) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t j = ((mix64(state) >> 32) * (uint64_t)(i + 1u)) >> 32;
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---- GEMM -------------------------------------------------------------------------------- */

/*
 * C[M x N] = (accumulate ? C : 0) + sum_p A(m, p) * B[p, n], with A(m, p) = A[m * lda + p], or
 * A[p * lda + m] when trans_a. Every element of C adds its P products in order p = 0 .. P-1,
 * whatever the blocking, so the result is the naive loop's.
 *
 * The micro-kernel keeps a GEMM_MR x (4 * GEMM_NV) block of C in registers.
 */
#ifndef GEMM_MR
#define GEMM_MR 4
#endif
#ifndef GEMM_NV
#define GEMM_NV 2
#endif

static inline void gemm_block(uint32_t rows, uint32_t nv, uint32_t P, const float *a0, size_t sa_m,
                              size_t sa_p, const float *B, uint32_t ldb, float *C, uint32_t ldc,
                              int accumulate) {
    v128_t c[GEMM_MR][GEMM_NV];
    for (uint32_t r = 0; r < GEMM_MR; r++)
        for (uint32_t v = 0; v < GEMM_NV; v++)
            c[r][v] = (accumulate && r < rows && v < nv) ? wasm_v128_load(C + (size_t)r * ldc + 4 * v)
                                                          : wasm_f32x4_splat(0.0f);
    for (uint32_t p = 0; p < P; p++) {
        const float *bp = B + (size_t)p * ldb;
        const float *ap = a0 + (size_t)p * sa_p;
        v128_t b[GEMM_NV];
        for (uint32_t v = 0; v < GEMM_NV; v++) b[v] = wasm_v128_load(bp + 4 * v);
        for (uint32_t r = 0; r < GEMM_MR; r++) {
            v128_t x = wasm_f32x4_splat(ap[r * sa_m]);
            for (uint32_t v = 0; v < GEMM_NV; v++) c[r][v] = wasm_f32x4_add(c[r][v], wasm_f32x4_mul(x, b[v]));
        }
    }
    for (uint32_t r = 0; r < GEMM_MR; r++)
        for (uint32_t v = 0; v < GEMM_NV; v++) wasm_v128_store(C + (size_t)r * ldc + 4 * v, c[r][v]);
}

static void gemm(uint32_t M, uint32_t N, uint32_t P, const float *A, uint32_t lda, int trans_a,
                 const float *B, uint32_t ldb, float *C, uint32_t ldc, int accumulate) {
    const size_t sa_m = trans_a ? 1u : lda, sa_p = trans_a ? lda : 1u;
    const uint32_t NB = 4u * GEMM_NV;
    uint32_t j = 0;
    for (; j + NB <= N; j += NB) {
        uint32_t i = 0;
        for (; i + GEMM_MR <= M; i += GEMM_MR) {
            gemm_block(GEMM_MR, GEMM_NV, P, A + (size_t)i * sa_m, sa_m, sa_p, B + j, ldb,
                       C + (size_t)i * ldc + j, ldc, accumulate);
        }
        for (; i < M; i++) {
            float *cr = C + (size_t)i * ldc + j;
            v128_t c[GEMM_NV];
            for (uint32_t v = 0; v < GEMM_NV; v++)
                c[v] = accumulate ? wasm_v128_load(cr + 4 * v) : wasm_f32x4_splat(0.0f);
            const float *a0 = A + (size_t)i * sa_m;
            for (uint32_t p = 0; p < P; p++) {
                const float *bp = B + (size_t)p * ldb + j;
                v128_t x = wasm_f32x4_splat(a0[(size_t)p * sa_p]);
                for (uint32_t v = 0; v < GEMM_NV; v++)
                    c[v] = wasm_f32x4_add(c[v], wasm_f32x4_mul(x, wasm_v128_load(bp + 4 * v)));
            }
            for (uint32_t v = 0; v < GEMM_NV; v++) wasm_v128_store(cr + 4 * v, c[v]);
        }
    }
    for (; j + 4u <= N; j += 4u) {
        for (uint32_t i = 0; i < M; i++) {
            float *cr = C + (size_t)i * ldc + j;
            v128_t c0 = accumulate ? wasm_v128_load(cr) : wasm_f32x4_splat(0.0f);
            const float *a0 = A + (size_t)i * sa_m;
            for (uint32_t p = 0; p < P; p++) {
                v128_t x = wasm_f32x4_splat(a0[(size_t)p * sa_p]);
                c0 = wasm_f32x4_add(c0, wasm_f32x4_mul(x, wasm_v128_load(B + (size_t)p * ldb + j)));
            }
            wasm_v128_store(cr, c0);
        }
    }
    for (; j < N; j++) {
        for (uint32_t i = 0; i < M; i++) {
            float *cr = C + (size_t)i * ldc + j;
            float c = accumulate ? *cr : 0.0f;
            const float *a0 = A + (size_t)i * sa_m;
            for (uint32_t p = 0; p < P; p++) c = c + a0[(size_t)p * sa_p] * B[(size_t)p * ldb + j];
            *cr = c;
        }
    }
}

/* dst[cols x rows] = src[rows x cols]^T */
static void transpose(const float *src, uint32_t rows, uint32_t cols, float *dst) {
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* z[r, :] += b (then ReLU when relu) for each of the rows. */
static void bias_act(float *z, const float *b, uint32_t rows, uint32_t cols, int relu) {
    for (uint32_t r = 0; r < rows; r++) {
        float *zr = z + (size_t)r * cols;
        for (uint32_t c = 0; c < cols; c++) {
            float v = zr[c] + b[c];
            zr[c] = relu ? (v > 0.0f ? v : 0.0f) : v;
        }
    }
}

/* db[c] = sum over rows of dz[r, c], rows in order. */
static void column_sums(const float *dz, uint32_t rows, uint32_t cols, float *db) {
    for (uint32_t c = 0; c < cols; c++) db[c] = 0.0f;
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t c = 0; c < cols; c++) db[c] = db[c] + dz[(size_t)r * cols + c];
}

/* dz *= (activation > 0): the ReLU derivative, from the activation it produced. */
static void relu_backward(float *dz, const float *act, size_t n) {
    for (size_t i = 0; i < n; i++) dz[i] = act[i] > 0.0f ? dz[i] : 0.0f;
}

/*
 * Softmax cross-entropy over bs rows of logits z[bs x k]: adds each row's loss (f32, then
 * summed in f64 in row order), counts argmax hits (first maximum wins) and, when dz is not
 * NULL, writes dz = (softmax - onehot) / bs.
 */
static void softmax_xent(const float *z, const uint32_t *y, uint32_t bs, uint32_t k, float *dz,
                         double *loss_sum, uint32_t *correct) {
    for (uint32_t r = 0; r < bs; r++) {
        const float *zr = z + (size_t)r * k;
        uint32_t arg = 0;
        float m = zr[0];
        for (uint32_t c = 1; c < k; c++)
            if (zr[c] > m) {
                m = zr[c];
                arg = c;
            }
        float s = 0.0f;
        for (uint32_t c = 0; c < k; c++) s = s + det_expf(zr[c] - m);
        *loss_sum += (double)(det_logf(s) - (zr[y[r]] - m));
        *correct += (uint32_t)(arg == y[r]);
        if (dz) {
            float *dr = dz + (size_t)r * k;
            for (uint32_t c = 0; c < k; c++) {
                float p = det_expf(zr[c] - m) / s;
                dr[c] = (p - (c == y[r] ? 1.0f : 0.0f)) / (float)bs;
            }
        }
    }
}

/* ---- the ABI ----------------------------------------------------------------------------- */

typedef struct {
    uint32_t op, flags, n_sizes;
    uint32_t sizes[CCGSC_MAX_SIZES];
    uint32_t n_samples, batch_size, n_params;
    uint64_t seed;
    float lr, momentum, prox_mu;
    const float *weights, *control, *momentum_in;
    const uint8_t *x;
    const uint32_t *y;
} train_task;

static int32_t model_setup(const train_task *t);
static void model_batch(const float *w, const float *x, const uint32_t *y, uint32_t bs,
                        float *grad, double *loss_sum, uint32_t *correct);

/* The largest batch of a call: the batch size, or fewer when there are fewer samples. */
static uint32_t batch_cap(const train_task *t) {
    uint32_t n = t->n_samples ? t->n_samples : 1u;
    return t->batch_size < n ? t->batch_size : n;
}

static uint8_t *input_buf;
static uint8_t *output_buf;

static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline float load_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

CCGSC_EXPORT(ccgsc_abi_version) int32_t ccgsc_abi_version(void) { return CCGSC_ABI_VERSION; }

CCGSC_EXPORT(ccgsc_input) int32_t ccgsc_input(int32_t len) {
    if (len < 0 || (uint32_t)len > MODEL_INPUT_CAPACITY) return 0;
    uintptr_t start = align16((uintptr_t)&__heap_base);
    if (!heap_reserve(start + (uint32_t)len)) return 0;
    input_buf = (uint8_t *)start;
    return (int32_t)start;
}

CCGSC_EXPORT(ccgsc_output) int32_t ccgsc_output(void) { return (int32_t)(uintptr_t)output_buf; }

static uint64_t section_bytes(uint64_t n) { return (n + 15u) & ~(uint64_t)15u; }

static void write_metrics(uint8_t *out, uint32_t status, uint32_t samples, double loss_sum,
                          uint32_t correct, uint32_t n_update, double norm) {
    memset(out, 0, CCGSC_METRICS_BYTES);
    memcpy(out + 0, &status, 4);
    memcpy(out + 4, &samples, 4);
    memcpy(out + 8, &loss_sum, 8);
    memcpy(out + 16, &correct, 4);
    memcpy(out + 20, &n_update, 4);
    memcpy(out + 24, &norm, 8);
}

/*
 * One SGD step over d parameters:
 *   g = grad [+ mu (w - w0)] [+ control];  [v = momentum v + g; g = v];  w = w - lr g
 * (bracketed terms only when mu != 0, control is given, momentum != 0). SIMD lanes do the same
 * IEEE operations in the same order as the scalar tail, so the result does not depend on d % 4.
 */
static void sgd_step(float *w, const float *grad, float *vel, const float *w0,
                     const float *control, float lr, float mom, float mu, uint32_t d) {
    const int prox = mu != 0.0f, heavy = mom != 0.0f, scaffold = control != NULL;
    const v128_t vlr = wasm_f32x4_splat(lr), vmom = wasm_f32x4_splat(mom);
    const v128_t vmu = wasm_f32x4_splat(mu);
    uint32_t p = 0;
    for (; p + 4u <= d; p += 4u) {
        v128_t wp = wasm_v128_load(w + p), g = wasm_v128_load(grad + p);
        if (prox) g = wasm_f32x4_add(g, wasm_f32x4_mul(vmu, wasm_f32x4_sub(wp, wasm_v128_load(w0 + p))));
        if (scaffold) g = wasm_f32x4_add(g, wasm_v128_load(control + p));
        if (heavy) {
            g = wasm_f32x4_add(wasm_f32x4_mul(vmom, wasm_v128_load(vel + p)), g);
            wasm_v128_store(vel + p, g);
        }
        wasm_v128_store(w + p, wasm_f32x4_sub(wp, wasm_f32x4_mul(vlr, g)));
    }
    for (; p < d; p++) {
        float g = grad[p];
        if (prox) g = g + mu * (w[p] - w0[p]);
        if (scaffold) g = g + control[p];
        if (heavy) {
            vel[p] = mom * vel[p] + g;
            g = vel[p];
        }
        w[p] = w[p] - lr * g;
    }
}

static int32_t run_task(const train_task *t, uint32_t len) {
    (void)len;
    const uint32_t d = t->n_params, n = t->n_samples, in = t->sizes[0];
    const uint32_t classes = t->sizes[t->n_sizes - 1];
    const int train = t->op == OP_TRAIN;
    const int momentum_out = (t->flags & FLAG_MOMENTUM_OUT) != 0;
    const uint64_t out_len = CCGSC_METRICS_BYTES + (train ? 4ull * d : 0) +
                             (train && momentum_out ? 4ull * d : 0);
    if (out_len > MODEL_OUTPUT_CAPACITY) return CCGSC_ERR_OUTPUT_TOO_LARGE;
    output_buf = heap_alloc(out_len);
    if (!output_buf) return CCGSC_ERR_OUT_OF_MEMORY;

    for (uint32_t i = 0; i < n; i++)
        if (t->y[i] >= classes) return CCGSC_ERR_BAD_INPUT;
    int32_t rc = model_setup(t);
    if (rc < 0) return rc;
    int finite = all_finite(t->weights, d);
    if (t->control) finite = finite && all_finite(t->control, d);
    if (t->momentum_in) finite = finite && all_finite(t->momentum_in, d);
    if (!(t->flags & FLAG_X_U8)) finite = finite && all_finite((const float *)t->x, (size_t)n * in);
    if (!finite) {
        write_metrics(output_buf, STATUS_NON_FINITE_INPUT, 0, 0.0, 0, 0, 0.0);
        return CCGSC_METRICS_BYTES;
    }

    const uint32_t bmax = batch_cap(t);
    float *w = heap_alloc(4ull * d);
    float *grad = train ? heap_alloc(4ull * d) : NULL;
    float *vel = train ? heap_alloc(4ull * d) : NULL;
    float *xb = heap_alloc(4ull * bmax * in);
    uint32_t *yb = heap_alloc(4ull * bmax);
    uint32_t *perm = heap_alloc(4ull * (n ? n : 1u));
    if (heap_failed) return CCGSC_ERR_OUT_OF_MEMORY;
    memcpy(w, t->weights, 4u * (size_t)d);
    if (vel && t->momentum_in) memcpy(vel, t->momentum_in, 4u * (size_t)d);
    if (train) {
        shuffle(perm, n, t->seed);
    } else {
        for (uint32_t i = 0; i < n; i++) perm[i] = i;
    }

    double loss_sum = 0.0;
    uint32_t correct = 0;
    for (uint32_t start = 0; start < n; start += bmax) {
        uint32_t bs = n - start < bmax ? n - start : bmax;
        for (uint32_t r = 0; r < bs; r++) {
            uint32_t s = perm[start + r];
            float *dst = xb + (size_t)r * in;
            if (t->flags & FLAG_X_U8) {
                const uint8_t *src = t->x + (size_t)s * in;
                for (uint32_t c = 0; c < in; c++) dst[c] = (float)src[c] / 255.0f;
            } else {
                memcpy(dst, t->x + 4u * (size_t)s * in, 4u * (size_t)in);
            }
            yb[r] = t->y[s];
        }
        model_batch(w, xb, yb, bs, grad, &loss_sum, &correct);
        if (!train) continue;
        sgd_step(w, grad, vel, t->weights, t->control, t->lr, t->momentum, t->prox_mu, d);
    }

    if (!train) {
        int ok = loss_sum - loss_sum == 0.0;
        write_metrics(output_buf, ok ? STATUS_OK : STATUS_NON_FINITE_RESULT, n, ok ? loss_sum : 0.0,
                      correct, 0, 0.0);
        return CCGSC_METRICS_BYTES;
    }
    float *update = (float *)(output_buf + CCGSC_METRICS_BYTES);
    double norm2 = 0.0;
    for (uint32_t p = 0; p < d; p++) {
        update[p] = w[p] - t->weights[p];
        norm2 += (double)update[p] * (double)update[p];
    }
    int ok = all_finite(w, d) && all_finite(update, d) && loss_sum - loss_sum == 0.0 &&
             norm2 - norm2 == 0.0;
    if (ok && momentum_out) {
        ok = all_finite(vel, d);
        memcpy(update + d, vel, 4u * (size_t)d);
    }
    if (!ok) {
        write_metrics(output_buf, STATUS_NON_FINITE_RESULT, n, 0.0, 0, 0, 0.0);
        return CCGSC_METRICS_BYTES;
    }
    write_metrics(output_buf, STATUS_OK, n, loss_sum, correct, d, __builtin_sqrt(norm2));
    return (int32_t)out_len;
}

CCGSC_EXPORT(ccgsc_run) int32_t ccgsc_run(int32_t len) {
    const uint8_t *in = input_buf;
    if (!in || len < (int32_t)CCGSC_HEADER_BYTES || (uint32_t)len > MODEL_INPUT_CAPACITY) {
        return CCGSC_ERR_BAD_INPUT;
    }
    heap_top = align16((uintptr_t)in + (uint32_t)len);
    heap_failed = 0;
    output_buf = NULL;
    train_task t;
    memset(&t, 0, sizeof t);
    if (load_u32(in) != CCGSC_ABI_VERSION) return CCGSC_ERR_BAD_INPUT;
    t.op = load_u32(in + 4);
    t.flags = load_u32(in + 8);
    t.n_sizes = load_u32(in + 12);
    if (t.op != OP_TRAIN && t.op != OP_EVAL) return CCGSC_ERR_BAD_INPUT;
    if (t.flags & ~FLAGS_KNOWN) return CCGSC_ERR_BAD_INPUT;
    if (t.n_sizes < 2u || t.n_sizes > CCGSC_MAX_SIZES) return CCGSC_ERR_BAD_INPUT;
    for (uint32_t i = 0; i < CCGSC_MAX_SIZES; i++) {
        t.sizes[i] = load_u32(in + 16 + 4 * i);
        if (i < t.n_sizes ? (t.sizes[i] == 0 || t.sizes[i] > 65536u) : t.sizes[i] != 0) {
            return CCGSC_ERR_BAD_INPUT;
        }
    }
    t.n_samples = load_u32(in + 48);
    t.batch_size = load_u32(in + 52);
    t.n_params = load_u32(in + 56);
    memcpy(&t.seed, in + 64, 8);
    t.lr = load_f32(in + 72);
    t.momentum = load_f32(in + 76);
    t.prox_mu = load_f32(in + 80);
    if (load_u32(in + 60) | load_u32(in + 84) | load_u32(in + 88) | load_u32(in + 92)) {
        return CCGSC_ERR_BAD_INPUT;
    }
    if (t.batch_size == 0 || !f32_finite(t.lr) || !f32_finite(t.momentum) ||
        !f32_finite(t.prox_mu) || t.momentum < 0.0f || t.prox_mu < 0.0f) {
        return CCGSC_ERR_BAD_INPUT;
    }
    if (t.sizes[t.n_sizes - 1] < 2u) return CCGSC_ERR_BAD_INPUT;
    if (t.op == OP_EVAL && (t.flags & (FLAG_CONTROL | FLAG_MOMENTUM_IN | FLAG_MOMENTUM_OUT))) {
        return CCGSC_ERR_BAD_INPUT;
    }
    /* Sections in order, each starting on a 16-byte boundary; the lengths must add up. */
    const uint64_t d = t.n_params, n = t.n_samples;
    const uint64_t x_bytes = n * t.sizes[0] * ((t.flags & FLAG_X_U8) ? 1u : 4u);
    uint64_t off = CCGSC_HEADER_BYTES;
    t.weights = (const float *)(in + off);
    off += section_bytes(4 * d);
    if (t.flags & FLAG_CONTROL) {
        t.control = (const float *)(in + off);
        off += section_bytes(4 * d);
    }
    if (t.flags & FLAG_MOMENTUM_IN) {
        t.momentum_in = (const float *)(in + off);
        off += section_bytes(4 * d);
    }
    if (off > (uint64_t)len) return CCGSC_ERR_BAD_INPUT;
    t.x = in + off;
    off += section_bytes(x_bytes);
    if (off > (uint64_t)len) return CCGSC_ERR_BAD_INPUT;
    t.y = (const uint32_t *)(in + off);
    off += section_bytes(4 * n);
    if (off != (uint64_t)len) return CCGSC_ERR_BAD_INPUT;
    return run_task(&t, (uint32_t)len);
}

#endif /* CCGSC_TRAIN_H */
