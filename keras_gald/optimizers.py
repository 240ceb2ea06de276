"""Optimizers: Keras' own, with TF's fused update kernels; the poly learning-rate schedule.

`keras.optimizers.SGD` updates each variable with four to five separate
element-wise ops (scale the momentum, scale the gradient, subtract, assign,
add), each a pass over the weights. TF has the same update as one kernel,
`ResourceApplyKerasMomentum` (`ResourceApplyGradientDescent` without
momentum). On the authors' GALD v1 ResNet-50 (52.4 M trainable weights) one
update takes 174.3 ms with Keras' ops and 46.3 ms fused on a 2-core CPU
(PyTorch's SGD: 49.0 ms; `benchmarks/speed.py --sections optimizer`,
`benchmarks/results/train_r50_cpu.json`).

Both are backend-neutral: on JAX (and any non-TensorFlow backend) `SGD` is
Keras' own SGD (XLA fuses the update inside the jitted train step) and `PolyLR`
is `keras.ops` maths. TensorFlow is imported only on its backend.
"""

import keras


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
        if keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
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


@keras.saving.register_keras_serializable(package="keras_gald")
class PolyLR(keras.optimizers.schedules.LearningRateSchedule):
    """The poly schedule: `initial_lr * (1 - step / max_steps) ** power`, 0 past `max_steps`.

    `step` is the optimizer's iteration count (step 0 -> `initial_lr`), so an optimizer
    restored from a checkpoint continues the schedule exactly. Serializable: it is saved
    with the optimizer in a `.keras` file and by `keras.optimizers.schedules.serialize`.

    Args:
        initial_lr: learning rate at step 0.
        max_steps: the step at which the rate reaches 0.
        power: the exponent (0.9 in the GALD / PSPNet / DeepLab recipes).

    Example:
    >>> opt = SGD(learning_rate=PolyLR(0.01, max_steps=50000, power=0.9), momentum=0.9)
    """

    def __init__(self, initial_lr, max_steps, power=0.9):
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.initial_lr = float(initial_lr)
        self.max_steps = int(max_steps)
        self.power = float(power)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        frac = keras.ops.minimum(step / float(self.max_steps), 1.0)
        return self.initial_lr * keras.ops.power(1.0 - frac, self.power)

    def get_config(self):
        return {"initial_lr": self.initial_lr, "max_steps": self.max_steps, "power": self.power}


# `.keras` files saved before the schedule moved into the library name it this way.
keras.saving.get_custom_objects()["keras_gald_training>PolyLR"] = PolyLR
