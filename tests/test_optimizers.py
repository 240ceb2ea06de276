"""keras_gald.optimizers.SGD: the fused update equals keras.optimizers.SGD."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.optimizers import SGD
from tests.harness import run_on_two_cpu_replicas


def _run(optimizer, steps=4, sparse=False, jit=False):
    rng = np.random.default_rng(0)
    weights = [tf.Variable(rng.normal(size=s).astype("float32"), name=n)
               for s, n in (((3, 3, 4, 5), "kernel"), ((5,), "bias"))]
    optimizer.build(weights)
    grads_per_step = [[tf.constant(rng.normal(size=w.shape).astype("float32")) for w in weights]
                      for _ in range(steps)]

    def apply(grads):
        if sparse:
            grads = [tf.IndexedSlices(g, tf.range(tf.shape(g)[0]), tf.shape(g)) for g in grads]
        optimizer.apply(grads, weights)

    step = tf.function(apply, jit_compile=True) if jit else apply
    for grads in grads_per_step:
        step(grads)
    return [w.numpy() for w in weights] + [v.numpy() for v in optimizer.variables[1:]]


@pytest.mark.parametrize("kwargs", [
    dict(momentum=0.9), dict(momentum=0.0), dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, clipnorm=0.5),
])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_keras_sgd(kwargs, jit):
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.001, power=0.9)
    ours = _run(SGD(learning_rate=schedule, **kwargs), jit=jit)
    theirs = _run(keras.optimizers.SGD(learning_rate=schedule, **kwargs))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sparse_gradients_take_keras_update():
    ours = _run(SGD(0.1, momentum=0.9), sparse=True)
    theirs = _run(keras.optimizers.SGD(0.1, momentum=0.9), sparse=True)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_and_serialization_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    y = rng.normal(size=(8, 6, 6, 2)).astype("float32")

    def trained(optimizer):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 3))
        model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        return model

    ours = trained(SGD(0.05, momentum=0.9))
    theirs = trained(keras.optimizers.SGD(0.05, momentum=0.9))
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ours.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is SGD
    assert loaded.optimizer.get_config() == ours.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, ours.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


_TWO_REPLICAS = r"""
import keras, numpy as np
from keras_gald.optimizers import SGD

rng = np.random.default_rng(2)
x = rng.normal(size=(8, 5, 5, 3)).astype("float32")
y = rng.normal(size=(8, 5, 5, 2)).astype("float32")
out = {}
for name, cls in (("ours", SGD), ("keras", keras.optimizers.SGD)):
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((5, 5, 3))
        model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
        model.compile(optimizer=cls(0.05, momentum=0.9, nesterov=True), loss="mse")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    out[name] = [w.tolist() for w in model.get_weights()]
print(json.dumps(out))
"""


def test_two_replicas_match_keras_sgd():
    out = run_on_two_cpu_replicas(_TWO_REPLICAS, timeout=600)
    for a, b in zip(out["ours"], out["keras"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
