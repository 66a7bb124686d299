/*
 * A stack of dense layers for the ABI v2 training kernels: sizes[0] inputs, ReLU hidden layers
 * of sizes[1 .. L-1], sizes[L] softmax outputs. Parameters, in order, per layer l:
 * W_l as [sizes[l-1] x sizes[l]] row-major, then b_l [sizes[l]].
 *
 * Forward:  z_l = a_{l-1} W_l + b_l,  a_l = ReLU(z_l) (hidden layers), logits z_L.
 * Backward: dz_L = (softmax - onehot) / bs;  dW_l = a_{l-1}^T dz_l;  db_l = column sums of dz_l;
 *           dz_{l-1} = (dz_l W_l^T) * (a_{l-1} > 0).
 */
#ifndef CCGSC_DENSE_STACK_H
#define CCGSC_DENSE_STACK_H

#include "ccgsc_train.h"

typedef struct {
    uint32_t n_layers;                   /* weight layers: n_sizes - 1 */
    uint32_t sizes[CCGSC_MAX_SIZES];
    size_t w_off[CCGSC_MAX_SIZES];       /* offset of W_l in the parameter vector */
    size_t b_off[CCGSC_MAX_SIZES];
    float *act[CCGSC_MAX_SIZES];         /* act[l]: [bmax x sizes[l]], act[0] is the input */
    float *dz;                           /* [bmax x max size] */
    float *dz_prev;
    float *wt;                           /* W_l^T scratch */
} dense_stack;

/* Parameter count of a dense stack; 0 if it does not fit in 32 bits. */
__attribute__((unused)) static uint64_t dense_param_count(const uint32_t *sizes, uint32_t n_sizes) {
    uint64_t d = 0;
    for (uint32_t l = 1; l < n_sizes; l++) d += (uint64_t)sizes[l - 1] * sizes[l] + sizes[l];
    return d > 0xFFFFFFFFu ? 0 : d;
}

/*
 * Lays out the stack over sizes[0 .. n_sizes-1] and allocates activations for bmax rows;
 * with_dx when dense_backward must also produce the input's gradient.
 */
static int32_t dense_setup(dense_stack *s, const uint32_t *sizes, uint32_t n_sizes,
                           uint32_t bmax, int with_dx) {
    s->n_layers = n_sizes - 1u;
    size_t off = 0;
    uint64_t widest = 0, widest_wt = 0;
    for (uint32_t l = 0; l < n_sizes; l++) {
        s->sizes[l] = sizes[l];
        if (sizes[l] > widest) widest = sizes[l];
        if (l == 0) continue;
        s->w_off[l] = off;
        off += (size_t)sizes[l - 1] * sizes[l];
        s->b_off[l] = off;
        off += sizes[l];
        if ((l > 1 || with_dx) && (uint64_t)sizes[l - 1] * sizes[l] > widest_wt) {
            widest_wt = (uint64_t)sizes[l - 1] * sizes[l];
        }
    }
    for (uint32_t l = 1; l < n_sizes; l++) s->act[l] = heap_alloc(4ull * bmax * sizes[l]);
    s->dz = heap_alloc(4ull * bmax * widest);
    s->dz_prev = heap_alloc(4ull * bmax * widest);
    s->wt = heap_alloc(4ull * (widest_wt ? widest_wt : 1u));
    return heap_failed ? CCGSC_ERR_OUT_OF_MEMORY : 0;
}

/* Forward pass from input rows x [bs x sizes[0]]; returns the logits [bs x sizes[L]]. */
static const float *dense_forward(dense_stack *s, const float *w, const float *x, uint32_t bs) {
    s->act[0] = (float *)x;
    for (uint32_t l = 1; l <= s->n_layers; l++) {
        uint32_t nin = s->sizes[l - 1], nout = s->sizes[l];
        gemm(bs, nout, nin, s->act[l - 1], nin, 0, w + s->w_off[l], nout, s->act[l], nout, 0);
        bias_act(s->act[l], w + s->b_off[l], bs, nout, l < s->n_layers);
    }
    return s->act[s->n_layers];
}

/*
 * Backward pass from the logits' gradient, already in s->dz; writes the parameter gradient
 * into grad and, when dx is not NULL, the input's gradient into dx [bs x sizes[0]].
 */
static void dense_backward(dense_stack *s, const float *w, uint32_t bs, float *grad, float *dx) {
    for (uint32_t l = s->n_layers; l >= 1; l--) {
        uint32_t nin = s->sizes[l - 1], nout = s->sizes[l];
        gemm(nin, nout, bs, s->act[l - 1], nin, 1, s->dz, nout, grad + s->w_off[l], nout, 0);
        column_sums(s->dz, bs, nout, grad + s->b_off[l]);
        if (l == 1 && !dx) break;
        float *dst = l == 1 ? dx : s->dz_prev;
        transpose(w + s->w_off[l], nin, nout, s->wt);
        gemm(bs, nin, nout, s->dz, nout, 0, s->wt, nin, dst, nin, 0);
        if (l == 1) break;
        relu_backward(dst, s->act[l - 1], (size_t)bs * nin);
        float *tmp = s->dz;
        s->dz = s->dz_prev;
        s->dz_prev = tmp;
    }
}

#endif /* CCGSC_DENSE_STACK_H */
