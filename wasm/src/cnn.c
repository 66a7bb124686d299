/*
 * cnn: the CNN of McMahan et al. 2017 for 28x28 grey images, trained with minibatch SGD
 * (ABI v2, docs/kernel-abi.md). sizes must be [784, 10].
 *
 *   5x5 conv, 32 channels, 'same' padding, ReLU -> 2x2 max pool -> 5x5 conv, 64 channels,
 *   ReLU -> 2x2 max pool -> dense 3136 -> 512 ReLU -> dense 512 -> 10 softmax.
 *
 * Tensors are HWC. Parameters, in order: W1 [25 x 32] (row (ky*5+kx)), b1 [32],
 * W2 [800 x 64] (row (ky*5+kx)*32 + c), b2 [64], then the dense stack [3136, 512, 10]
 * (W3 [3136 x 512], b3, W4 [512 x 10], b4): 1,663,370 in all.
 *
 * Convolutions are im2col + GEMM, one sample at a time; the backward pass recomputes the
 * im2col matrices and accumulates the convolution gradients sample by sample, in order. Max
 * pooling sends the gradient to the first maximum of each window (row-major).
 */
#define MODEL_INPUT_CAPACITY (128u << 20)
#define MODEL_OUTPUT_CAPACITY (16u << 20)

#include "dense_stack.h"

#define IMG 28u
#define K 5u
#define C1 32u
#define P1 14u /* after the first pool */
#define C2 64u
#define P2 7u
#define FLAT (P2 * P2 * C2)
#define HIDDEN 512u
#define CLASSES 10u

#define OFF_W1 0u
#define OFF_B1 (OFF_W1 + K * K * C1)
#define OFF_W2 (OFF_B1 + C1)
#define OFF_B2 (OFF_W2 + K * K * C1 * C2)
#define OFF_DENSE (OFF_B2 + C2)
#define N_PARAMS (OFF_DENSE + FLAT * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES)

static dense_stack net;
static float *out1, *pool1, *out2, *pool2, *dpool2; /* per batch */
static uint8_t *idx1, *idx2;
static float *col1, *col2, *dcol2, *dout1, *dout2, *dpool1, *w2t; /* per sample */

static int32_t model_setup(const train_task *t) {
    if (t->n_sizes != 2u || t->sizes[0] != IMG * IMG || t->sizes[1] != CLASSES) {
        return CCGSC_ERR_BAD_INPUT;
    }
    if (t->n_params != N_PARAMS) return CCGSC_ERR_BAD_INPUT;
    const uint64_t b = batch_cap(t);
    static const uint32_t dense_sizes[3] = {FLAT, HIDDEN, CLASSES};
    int32_t rc = dense_setup(&net, dense_sizes, 3u, (uint32_t)b, 1);
    if (rc < 0) return rc;
    out1 = heap_alloc(4ull * b * IMG * IMG * C1);
    pool1 = heap_alloc(4ull * b * P1 * P1 * C1);
    idx1 = heap_alloc(b * P1 * P1 * C1);
    out2 = heap_alloc(4ull * b * P1 * P1 * C2);
    pool2 = heap_alloc(4ull * b * FLAT);
    idx2 = heap_alloc(b * FLAT);
    col1 = heap_alloc(4ull * IMG * IMG * K * K);
    if (t->op == OP_TRAIN) {
        dpool2 = heap_alloc(4ull * b * FLAT);
        col2 = heap_alloc(4ull * P1 * P1 * K * K * C1);
        dcol2 = heap_alloc(4ull * P1 * P1 * K * K * C1);
        dout1 = heap_alloc(4ull * IMG * IMG * C1);
        dout2 = heap_alloc(4ull * P1 * P1 * C2);
        dpool1 = heap_alloc(4ull * P1 * P1 * C1);
        w2t = heap_alloc(4ull * K * K * C1 * C2);
    } else {
        col2 = heap_alloc(4ull * P1 * P1 * K * K * C1);
    }
    return heap_failed ? CCGSC_ERR_OUT_OF_MEMORY : 0;
}

/* col[(oy*side+ox), (ky*5+kx)*ch + c] = in[oy+ky-2, ox+kx-2, c], zero outside the image. */
static void im2col(const float *in, uint32_t side, uint32_t ch, float *col) {
    const uint32_t row = K * K * ch;
    for (uint32_t oy = 0; oy < side; oy++)
        for (uint32_t ox = 0; ox < side; ox++) {
            float *dst = col + (size_t)(oy * side + ox) * row;
            for (uint32_t ky = 0; ky < K; ky++)
                for (uint32_t kx = 0; kx < K; kx++) {
                    int32_t iy = (int32_t)(oy + ky) - 2, ix = (int32_t)(ox + kx) - 2;
                    float *d = dst + (ky * K + kx) * ch;
                    if (iy < 0 || ix < 0 || iy >= (int32_t)side || ix >= (int32_t)side) {
                        for (uint32_t c = 0; c < ch; c++) d[c] = 0.0f;
                    } else {
                        const float *s = in + ((size_t)iy * side + (uint32_t)ix) * ch;
                        for (uint32_t c = 0; c < ch; c++) d[c] = s[c];
                    }
                }
        }
}

/* The transpose of im2col: adds each column entry back to its pixel, in column order. */
static void col2im(const float *col, uint32_t side, uint32_t ch, float *out) {
    const uint32_t row = K * K * ch;
    for (size_t i = 0; i < (size_t)side * side * ch; i++) out[i] = 0.0f;
    for (uint32_t oy = 0; oy < side; oy++)
        for (uint32_t ox = 0; ox < side; ox++) {
            const float *src = col + (size_t)(oy * side + ox) * row;
            for (uint32_t ky = 0; ky < K; ky++)
                for (uint32_t kx = 0; kx < K; kx++) {
                    int32_t iy = (int32_t)(oy + ky) - 2, ix = (int32_t)(ox + kx) - 2;
                    if (iy < 0 || ix < 0 || iy >= (int32_t)side || ix >= (int32_t)side) continue;
                    float *d = out + ((size_t)iy * side + (uint32_t)ix) * ch;
                    const float *s = src + (ky * K + kx) * ch;
                    for (uint32_t c = 0; c < ch; c++) d[c] = d[c] + s[c];
                }
        }
}

/* 2x2 max pool of in [side x side x ch]; idx keeps which of the four (row-major) won. */
static void maxpool(const float *in, uint32_t side, uint32_t ch, float *out, uint8_t *idx) {
    const uint32_t half = side / 2u;
    for (uint32_t py = 0; py < half; py++)
        for (uint32_t px = 0; px < half; px++)
            for (uint32_t c = 0; c < ch; c++) {
                float best = 0.0f;
                uint8_t arg = 0;
                for (uint32_t q = 0; q < 4u; q++) {
                    uint32_t y = 2u * py + (q >> 1), x = 2u * px + (q & 1u);
                    float v = in[((size_t)y * side + x) * ch + c];
                    if (q == 0 || v > best) {
                        best = v;
                        arg = (uint8_t)q;
                    }
                }
                size_t o = ((size_t)py * half + px) * ch + c;
                out[o] = best;
                idx[o] = arg;
            }
}

/* din [side x side x ch] = the pooled gradient dout routed to each window's winner. */
static void maxpool_backward(const float *dout, const uint8_t *idx, uint32_t side, uint32_t ch,
                             float *din) {
    const uint32_t half = side / 2u;
    for (size_t i = 0; i < (size_t)side * side * ch; i++) din[i] = 0.0f;
    for (uint32_t py = 0; py < half; py++)
        for (uint32_t px = 0; px < half; px++)
            for (uint32_t c = 0; c < ch; c++) {
                size_t o = ((size_t)py * half + px) * ch + c;
                uint32_t y = 2u * py + (idx[o] >> 1), x = 2u * px + (idx[o] & 1u);
                din[((size_t)y * side + x) * ch + c] = dout[o];
            }
}

static void add_column_sums(const float *dz, uint32_t rows, uint32_t cols, float *db) {
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t c = 0; c < cols; c++) db[c] = db[c] + dz[(size_t)r * cols + c];
}

static void model_batch(const float *w, const float *x, const uint32_t *y, uint32_t bs,
                        float *grad, double *loss_sum, uint32_t *correct) {
    const size_t s1 = (size_t)IMG * IMG * C1, sp1 = (size_t)P1 * P1 * C1;
    const size_t s2 = (size_t)P1 * P1 * C2;
    for (uint32_t s = 0; s < bs; s++) {
        im2col(x + (size_t)s * IMG * IMG, IMG, 1u, col1);
        gemm(IMG * IMG, C1, K * K, col1, K * K, 0, w + OFF_W1, C1, out1 + s * s1, C1, 0);
        bias_act(out1 + s * s1, w + OFF_B1, IMG * IMG, C1, 1);
        maxpool(out1 + s * s1, IMG, C1, pool1 + s * sp1, idx1 + s * sp1);
        im2col(pool1 + s * sp1, P1, C1, col2);
        gemm(P1 * P1, C2, K * K * C1, col2, K * K * C1, 0, w + OFF_W2, C2, out2 + s * s2, C2, 0);
        bias_act(out2 + s * s2, w + OFF_B2, P1 * P1, C2, 1);
        maxpool(out2 + s * s2, P1, C2, pool2 + (size_t)s * FLAT, idx2 + (size_t)s * FLAT);
    }
    const float *logits = dense_forward(&net, w + OFF_DENSE, pool2, bs);
    softmax_xent(logits, y, bs, CLASSES, grad ? net.dz : NULL, loss_sum, correct);
    if (!grad) return;

    dense_backward(&net, w + OFF_DENSE, bs, grad + OFF_DENSE, dpool2);
    for (uint32_t p = 0; p < OFF_DENSE; p++) grad[p] = 0.0f;
    transpose(w + OFF_W2, K * K * C1, C2, w2t);
    for (uint32_t s = 0; s < bs; s++) {
        maxpool_backward(dpool2 + (size_t)s * FLAT, idx2 + (size_t)s * FLAT, P1, C2, dout2);
        relu_backward(dout2, out2 + s * s2, s2);
        im2col(pool1 + s * sp1, P1, C1, col2);
        gemm(K * K * C1, C2, P1 * P1, col2, K * K * C1, 1, dout2, C2, grad + OFF_W2, C2, 1);
        add_column_sums(dout2, P1 * P1, C2, grad + OFF_B2);
        gemm(P1 * P1, K * K * C1, C2, dout2, C2, 0, w2t, K * K * C1, dcol2, K * K * C1, 0);
        col2im(dcol2, P1, C1, dpool1);
        maxpool_backward(dpool1, idx1 + s * sp1, IMG, C1, dout1);
        relu_backward(dout1, out1 + s * s1, s1);
        im2col(x + (size_t)s * IMG * IMG, IMG, 1u, col1);
        gemm(K * K, C1, IMG * IMG, col1, K * K, 1, dout1, C1, grad + OFF_W1, C1, 1);
        add_column_sums(dout1, IMG * IMG, C1, grad + OFF_B1);
    }
}
