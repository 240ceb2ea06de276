"""One model, two backends: the same `.keras` file gives the same logits on TensorFlow
and on JAX, and `Segmenter` trains and predicts with Keras' JAX trainer.

The backend is fixed per process, so the cross-backend tests save in this (TensorFlow)
process and load in a child Python with `KERAS_BACKEND=jax`, and the other way round.
The `@pytest.mark.jax` tests run in both passes (`KERAS_BACKEND=jax pytest -m jax`).
"""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gald.models import GALD, Segmenter  # noqa: E402
from tests.harness import assert_close_relative, run_python  # noqa: E402

ON_TF = keras.backend.backend() == "tensorflow"
OTHER_BACKEND = "jax" if ON_TF else "tensorflow"

# A small GALD network (every block of the paper's model: dilated ResNet, ASPP, LDv2,
# aux head) and an odd-sized batch of normalised images.
MODEL_ARGS = dict(backbone="resnet_tiny", ga="aspp", ld="v2", num_classes=5)
INPUT_SHAPE = (2, 33, 47, 3)

# Child script (the other backend): load `argv[1]`, predict on `argv[2]`'s `x` and write
# the logits, backend and weight layout (path, shape) to `argv[3]`; then change the
# BatchNorm statistics (a model of its own), save it to `argv[4]` and write its
# predictions to `argv[5]` likewise.
LOAD_PREDICT_CHANGE_SAVE = """
import json, sys
import numpy as np
import keras
import keras_gald  # registers the library's classes
from tests.layers._helpers import randomize_batch_norms

def report(model, x, prefix):
    np.save(prefix + ".npy", model.predict(x, verbose=0))
    json.dump({"backend": keras.backend.backend(),
               "weights": [[w.path, list(w.shape)] for w in model.weights]},
              open(prefix + ".json", "w"))

model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])["x"]
report(model, x, sys.argv[3])
randomize_batch_norms(model, seed=2)
model.save(sys.argv[4])
report(model, x, sys.argv[5])
"""


def _images(seed=0):
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)


def _layout(model):
    return [[w.path, list(w.shape)] for w in model.weights]


def _child_result(prefix, backend):
    with open(f"{prefix}.json") as f:
        meta = json.load(f)
    assert meta["backend"] == backend, meta["backend"]
    return np.load(f"{prefix}.npy"), meta["weights"]


@pytest.mark.slow
@pytest.mark.skipif(not ON_TF, reason="the parent process is the TensorFlow side")
def test_keras_files_give_the_same_logits_on_tensorflow_and_jax(tmp_path):
    """Saved on TF -> loaded on JAX, and (with changed weights) saved on JAX -> loaded
    on TF: same weight layout, logits within 1e-4 relative."""
    from tests.layers._helpers import randomize_batch_norms

    keras.utils.set_random_seed(0)
    model = GALD(**MODEL_ARGS)
    randomize_batch_norms(model, seed=1)
    x = _images()
    expected = model.predict(x, verbose=0)
    assert expected.shape == INPUT_SHAPE[:3] + (MODEL_ARGS["num_classes"],)
    model.save(tmp_path / "tf.keras")
    np.savez(tmp_path / "x.npz", x=x)

    run_python(["-c", LOAD_PREDICT_CHANGE_SAVE, tmp_path / "tf.keras", tmp_path / "x.npz",
                tmp_path / "jax_loaded", tmp_path / "jax.keras", tmp_path / "jax_saved"],
               env={"KERAS_BACKEND": "jax"}, timeout=600)
    logits, layout = _child_result(tmp_path / "jax_loaded", "jax")
    assert layout == _layout(model)
    assert_close_relative(logits, expected, rtol=1e-4)

    jax_logits, layout = _child_result(tmp_path / "jax_saved", "jax")
    assert np.abs(jax_logits - expected).max() > 1e-3  # the JAX side saved other weights
    from_jax = keras.saving.load_model(tmp_path / "jax.keras")
    assert isinstance(from_jax, Segmenter)
    assert _layout(from_jax) == layout
    assert_close_relative(from_jax.predict(x, verbose=0), jax_logits, rtol=1e-4)


# ------------------------------------------------------------- Segmenter on any backend
def _stand_in_segmenter(num_classes=4, sync_bn=False):
    """A two-conv `Segmenter` of Keras layers only, with an aux head at half size:
    tests the model class apart from the library's layers."""
    images = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="body")(images)
    h = keras.layers.BatchNormalization(synchronized=sync_bn, name="body_bn")(h)
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(h)
    a = keras.layers.AveragePooling2D(2, name="aux_pool")(h)
    a = keras.layers.Conv2D(num_classes, 1, name="aux_classifier")(a)
    a = keras.layers.UpSampling2D(2, name="aux_up")(a)
    return Segmenter(images, {"logits": logits, "aux_logits": a}, name="stand_in")


def _cross_entropy(logits, labels):
    """Float64 mean softmax cross-entropy of NHWC logits against integer labels."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None].astype(np.int64), -1).mean()


def _batch(seed=0, n=4, size=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size, size, 3)).astype(np.float32)
    return x, (x[..., 0] > 0).astype(np.int32) + 2 * (x[..., 1] > 0).astype(np.int32)


@pytest.mark.jax
def test_compute_loss_is_main_plus_weighted_aux_loss():
    model = _stand_in_segmenter()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=ce, aux_loss=ce, aux_loss_weight=0.25)
    x, y = _batch()
    outputs = model(x, training=True)
    assert set(outputs) == {"logits", "aux_logits"}
    loss = model.compute_loss(x=x, y=y, y_pred=outputs, training=True)
    expected = (_cross_entropy(outputs["logits"], y)
                + 0.25 * _cross_entropy(outputs["aux_logits"], y))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Metrics see the main logits only (a dict would fail the accuracy metric's shapes).
    model.compile(optimizer="sgd", loss=ce, aux_loss=None, metrics=["accuracy"])
    loss = model.compute_loss(x=x, y=y, y_pred=outputs, training=True)
    np.testing.assert_allclose(float(loss), _cross_entropy(outputs["logits"], y), rtol=1e-5)


@pytest.mark.jax
def test_stand_in_segmenter_trains_and_predicts_logits():
    keras.utils.set_random_seed(0)
    model = _stand_in_segmenter()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=ce, aux_loss=ce,
                  metrics=["accuracy"])
    x, y = _batch(n=8)
    losses = model.fit(x, y, batch_size=4, epochs=4, verbose=0).history["loss"]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    logits = model.predict(x, verbose=0)
    assert logits.shape == (8, 8, 8, 4)  # main logits only, no aux head at inference
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}


@pytest.mark.jax
@pytest.mark.skipif(ON_TF, reason="what is refused off TensorFlow")
def test_tensorflow_only_features_are_refused_clearly():
    from keras_gald.models import official_gald_v1

    for factory, kwargs in ((GALD, MODEL_ARGS), (official_gald_v1, dict(depth=50))):
        with pytest.raises(ValueError, match="sync_bn=True .*TensorFlow-only.*sync_bn=False"):
            factory(**kwargs, sync_bn=True)
    # A synchronized layer in a model assembled by hand is refused at compile.
    model = _stand_in_segmenter()
    model.get_layer("body_bn").synchronized = True
    with pytest.raises(ValueError, match="synchronized BatchNorm.*TensorFlow-only.*sync_bn=False"):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", aux_loss=None)
    model = _stand_in_segmenter()
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow keras-gald export"):
        model.export("unused.onnx", format="onnx")
    from keras_gald import export

    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow keras-gald export"):
        export.to_onnx(model, "unused.onnx")


# ---------------------------------------------------------------- GALD on the backend
@pytest.mark.jax
@pytest.mark.skipif(ON_TF, reason="TensorFlow's fit is tested in tests/models/test_gald.py")
def test_gald_fit_on_synthetic_data_lowers_the_loss_and_predicts():
    from keras_gald.data import make_dataset
    from keras_gald.data.synthetic import SYNTHETIC_INFO, synthetic_source
    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    keras.utils.set_random_seed(0)
    size = 32
    train = make_dataset(synthetic_source(4, size, size, seed=0), crop_size=(size, size),
                         batch_size=2, scale_range=(1.0, 1.0), flip=False, seed=0,
                         shuffle=False, cache=True)
    classes = SYNTHETIC_INFO.num_classes
    model = GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=classes, head_channels=8,
                 aspp_filters=8)
    model.compile(optimizer=SGD(0.01, momentum=0.9), loss=SegmentationCrossEntropy())
    losses = model.fit(train, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    # The auxiliary head exists for training only (stage-3 resolution), never in predict.
    images = np.random.default_rng(0).standard_normal((1, 23, 37, 3)).astype(np.float32)
    train_out = model.compute_output_spec(keras.KerasTensor(images.shape), training=True)
    assert set(train_out) == {"logits", "aux_logits"}
    assert train_out["aux_logits"].shape[1] < 23 and train_out["aux_logits"].shape[-1] == classes
    assert model.predict(images, verbose=0).shape == (1, 23, 37, classes)
    assert not any("aux" in layer.name for layer in model.inference_model().layers)
