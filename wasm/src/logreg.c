/*
 * logreg: multinomial logistic regression trained with minibatch SGD (ABI v2).
 *
 * sizes = [inputs, classes]; parameters W [inputs x classes] then b [classes]. The same code
 * as the mlp kernel restricted to no hidden layer.
 */
#define LOGREG 1
#include "mlp.c"
