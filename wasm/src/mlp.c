/*
 * mlp: a multilayer perceptron trained with minibatch SGD (ABI v2, docs/kernel-abi.md).
 *
 * sizes = [inputs, hidden..., classes], 2 to 8 entries: ReLU hidden layers, softmax
 * cross-entropy. McMahan et al. 2017's 2NN is sizes = [784, 200, 200, 10] (199,210 params).
 * With LOGREG defined the kernel accepts only [inputs, classes]: multinomial logistic
 * regression.
 */
/* The kernel's own buffers match the limits its manifest entry declares. */
#ifdef LOGREG
#define MODEL_INPUT_CAPACITY (64u << 20)
#define MODEL_OUTPUT_CAPACITY (8u << 20)
#else
#define MODEL_INPUT_CAPACITY (128u << 20)
#define MODEL_OUTPUT_CAPACITY (32u << 20)
#endif

#include "dense_stack.h"

static dense_stack net;

static int32_t model_setup(const train_task *t) {
#ifdef LOGREG
    if (t->n_sizes != 2u) return CCGSC_ERR_BAD_INPUT;
#endif
    if (dense_param_count(t->sizes, t->n_sizes) != t->n_params) return CCGSC_ERR_BAD_INPUT;
    return dense_setup(&net, t->sizes, t->n_sizes, batch_cap(t), 0);
}

static void model_batch(const float *w, const float *x, const uint32_t *y, uint32_t bs,
                        float *grad, double *loss_sum, uint32_t *correct) {
    const float *logits = dense_forward(&net, w, x, bs);
    uint32_t classes = net.sizes[net.n_layers];
    softmax_xent(logits, y, bs, classes, grad ? net.dz : NULL, loss_sum, correct);
    if (grad) dense_backward(&net, w, bs, grad, NULL);
}
