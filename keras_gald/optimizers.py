"""Optimizers: Keras' own, with TF's fused update kernels.

`keras.optimizers.SGD` updates each variable with four to five separate
element-wise ops (scale the momentum, scale the gradient, subtract, assign,
add), each a pass over the weights. TF has the same update as one kernel,
`ResourceApplyKerasMomentum` (`ResourceApplyGradientDescent` without
momentum). On the authors' GALD v1 ResNet-50 (52.4 M trainable weights) one
update takes 174.3 ms with Keras' ops and 46.3 ms fused on a 2-core CPU
(PyTorch's SGD: 49.0 ms; `benchmarks/speed.py --sections optimizer`,
`benchmarks/results/train_r50_cpu.json`).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_gald")
class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose per-variable update is one fused TF kernel.

    Same arguments, config, slot variables and numbers as
    `keras.optimizers.SGD` (momentum `m <- momentum * m - lr * g`, then
    `w <- w + m`, or `w <- w + momentum * m - lr * g` with `nesterov=True`);
    weight decay, gradient clipping, EMA, loss scaling and `tf.distribute`
    work as in Keras, which applies them around `update_step`. Sparse
    gradients and non-TensorFlow backends take Keras' own update.

    Example:
    >>> opt = SGD(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    >>> model.compile(optimizer=opt, loss=...)
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        var = variable.value if isinstance(variable, keras.Variable) else variable
        lr = tf.cast(learning_rate, var.dtype)
        grad = tf.cast(gradient, var.dtype)
        if self.momentum == 0:
            tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=grad)
            return
        momentum = self.momentums[self._get_variable_index(variable)]
        momentum = momentum.value if isinstance(momentum, keras.Variable) else momentum
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=var.handle,
            accum=momentum.handle,
            lr=lr,
            grad=grad,
            momentum=tf.cast(self.momentum, var.dtype),
            use_nesterov=bool(self.nesterov),
        )
