"""keras_gald.optimizers: the fused SGD update equals keras.optimizers.SGD; the poly schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.optimizers import SGD, PolyLR
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



def _poly(lr, total, power, step):
    return lr * (1 - min(step / total, 1.0)) ** power


def test_poly_schedule_values():
    sched = PolyLR(0.01, 100, 0.9)
    steps = [0, 1, 50, 99, 100, 150]
    np.testing.assert_allclose([float(sched(s)) for s in steps],
                               [_poly(0.01, 100, 0.9, s) for s in steps], rtol=1e-6, atol=1e-9)
    assert float(sched(0)) == pytest.approx(0.01) and float(sched(150)) == 0.0
    # Driven by the optimizer's iteration count.
    opt = SGD(learning_rate=PolyLR(0.05, 40, 2.0))
    opt.iterations.assign(10)
    assert float(opt.learning_rate) == pytest.approx(0.05 * 0.75 ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        PolyLR(0.01, 0)


def test_poly_schedule_serialization():
    sched = PolyLR(0.02, 300, 0.8)
    config = keras.optimizers.schedules.serialize(sched)
    assert config["registered_name"] == "keras_gald>PolyLR"
    for again in (keras.optimizers.schedules.deserialize(config),
                  PolyLR.from_config(sched.get_config())):
        assert type(again) is PolyLR and again.get_config() == sched.get_config()
        assert float(again(37)) == pytest.approx(_poly(0.02, 300, 0.8, 37), rel=1e-6)
    # `.keras` files written before the schedule moved into the library still load.
    old = dict(config, registered_name="keras_gald_training>PolyLR", module=None)
    assert type(keras.optimizers.schedules.deserialize(old)) is PolyLR


def test_poly_schedule_saved_with_the_optimizer(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=SGD(PolyLR(0.1, 20, 0.9), momentum=0.9), loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), batch_size=2, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    schedule = loaded.optimizer._learning_rate  # Keras keeps the schedule object here
    assert isinstance(schedule, PolyLR) and schedule.get_config() == {
        "initial_lr": 0.1, "max_steps": 20, "power": 0.9}
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert float(loaded.optimizer.learning_rate) == pytest.approx(_poly(0.1, 20, 0.9, 4), rel=1e-6)


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
