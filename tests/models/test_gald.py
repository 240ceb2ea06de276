"""The GALD factory: every GA x LD combination, arrangements, outputs, round trips, errors.

Tests marked `jax` also run under `KERAS_BACKEND=jax` (cheap ones: outputs, errors,
the auxiliary loss); JAX training and cross-backend weights: `tests/models/test_backends.py`.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gald.models.gald import GALD
from keras_gald.models.segmenter import Segmenter
from tests.harness import assert_close_relative

TINY = "resnet_tiny"
H, W = 65, 97


def _images(n=1, h=H, w=W, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype("float32")


@pytest.mark.parametrize(
    "ga,ld", list(itertools.product(["aspp", "psp", "nonlocal", "cgnl", None], ["v1", "v2", None]))
)
def test_every_ga_ld_combination_builds_and_runs(ga, ld):
    model = GALD(TINY, ga=ga, ld=ld, num_classes=5)
    logits = model(_images())
    assert logits.shape == (1, H, W, 5)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(logits)).all()


def _sources(model, name):
    """What feeds layer `name`: producing layer names, `backbone:0` (stage 3) /
    `backbone:1` (the final features X) for the backbone's two outputs."""
    backbone = model.get_layer(TINY)
    names = []
    for tensor in model.get_layer(name)._inbound_nodes[0].input_tensors:
        operation, _, index = tensor._keras_history
        names.append(f"backbone:{index}" if operation is backbone else operation.name)
    return names


# Which layer feeds which in the paper's three arrangements (Sec. III-C): GALD is LD
# distributing the GA output with X as the local features; LDGA runs LD on X and GA
# after it; parallel concatenates GA(X) and LD(X). The head always sees X as well.
_TOPOLOGY = {
    ("gald", "v1"): {"ga_aspp": ["backbone:1"], "ld_v1": ["ga_aspp"],
                     "head_concat": ["ld_v1", "backbone:1"]},
    ("gald", "v2"): {"ga_aspp": ["backbone:1"], "ld_v2": ["ga_aspp", "backbone:1"],
                     "head_conv": ["ld_v2"]},  # LDv2 concatenates X itself
    ("ldga", "v1"): {"ld_v1": ["backbone:1"], "ga_aspp": ["ld_v1"],
                     "head_concat": ["ga_aspp", "backbone:1"]},
    ("ldga", "v2"): {"ld_v2": ["backbone:1", "backbone:1"], "ga_aspp": ["ld_v2"],
                     "head_concat": ["ga_aspp", "backbone:1"]},
    ("parallel", "v1"): {"ga_aspp": ["backbone:1"], "ld_v1": ["backbone:1"],
                         "parallel_concat": ["ga_aspp", "ld_v1"],
                         "head_concat": ["parallel_concat", "backbone:1"]},
    ("parallel", "v2"): {"ga_aspp": ["backbone:1"], "ld_v2": ["backbone:1", "backbone:1"],
                         "parallel_concat": ["ga_aspp", "ld_v2"],
                         "head_concat": ["parallel_concat", "backbone:1"]},
}


@pytest.mark.parametrize("arrangement", ["gald", "ldga", "parallel"])
@pytest.mark.parametrize("ld", ["v1", "v2"])
def test_arrangements(arrangement, ld):
    model = GALD(TINY, ga="aspp", ld=ld, arrangement=arrangement, num_classes=4)
    for layer, sources in _TOPOLOGY[arrangement, ld].items():
        assert _sources(model, layer) == sources, (arrangement, ld, layer)
    assert _sources(model, "aux_conv") == ["backbone:0"]  # the auxiliary head reads stage 3
    assert model(_images()).shape == (1, H, W, 4)


def test_aux_head_only_in_training():
    model = GALD(TINY, ga="aspp", ld="v1", num_classes=3, aux_head=True)
    x = _images(2)
    train_out = model(x, training=True)
    assert set(train_out) == {"logits", "aux_logits"}
    assert train_out["aux_logits"].shape[-1] == 3
    assert train_out["aux_logits"].shape[1] < H  # stage-3 resolution
    assert model(x).shape == (2, H, W, 3)
    assert model.predict(x, verbose=0).shape == (2, H, W, 3)
    inference = model.inference_model()
    assert not any("aux" in layer.name for layer in inference.layers)


def test_no_aux_head():
    model = GALD(TINY, ga=None, ld=None, num_classes=3, aux_head=False)
    assert set(model(_images(), training=True)) == {"logits"}


def test_dynamic_spatial_shapes_and_odd_sizes():
    model = GALD(TINY, ga="psp", ld="v2", num_classes=3)
    for h, w in [(65, 97), (33, 47), (80, 64)]:
        assert model(_images(1, h, w)).shape == (1, h, w, 3)


def test_mixed_bfloat16_returns_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = GALD(TINY, ga="aspp", ld="v2", num_classes=3)
        out = model(_images())
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert out.shape == (1, H, W, 3)
        assert np.isfinite(keras.ops.convert_to_numpy(out)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_round_trip_identical_outputs(tmp_path):
    model = GALD(TINY, ga="cgnl", ld="v2", num_classes=4)
    x = _images(2)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "gald.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, Segmenter)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)
    assert set(restored(x, training=True)) == {"logits", "aux_logits"}


@pytest.mark.jax
def test_compiled_model_loads_compiled_and_trains_on_identically(tmp_path):
    """A compiled model saved after some steps loads with its optimizer and state,
    main and auxiliary losses (and weight) and metrics, without Keras' "compile()
    was not called" warning: one more step then gives the same weights."""
    import warnings

    from keras_gald.losses import OHEMCrossEntropy
    from keras_gald.metrics import MeanIoU
    from keras_gald.optimizers import SGD, PolyLR

    x = _images(2)
    y = np.random.default_rng(1).integers(0, 4, size=x.shape[:3]).astype("int32")
    model = GALD(TINY, ga="aspp", ld="v1", num_classes=4, dropout=0.0, aspp_dropout=0.0)
    model.compile(optimizer=SGD(PolyLR(0.05, 20), momentum=0.9),
                  loss=OHEMCrossEntropy(thresh=0.7, min_kept=50), aux_loss_weight=0.25,
                  metrics=[MeanIoU(num_classes=4)])
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    path = tmp_path / "gald.keras"
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = keras.saving.load_model(path)
    assert restored.aux_loss_weight == 0.25
    assert restored.aux_loss.get_config() == model.aux_loss.get_config()
    assert restored.loss.get_config() == model.loss.get_config()
    assert int(restored.optimizer.iterations) == 2
    assert [m.name for m in restored.metrics] == [m.name for m in model.metrics]
    saved = {v.path: keras.ops.convert_to_numpy(v) for v in model.optimizer.variables}
    loaded = {v.path: keras.ops.convert_to_numpy(v) for v in restored.optimizer.variables}
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():  # momentum and step count
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    before = model.get_weights()
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    restored.fit(x, y, epochs=1, batch_size=2, verbose=0)
    # The same update up to float order (the loaded model's step is traced anew),
    # relative to the largest weight change (some, e.g. biases before a BatchNorm, have
    # a zero gradient up to noise); with the momentum lost it differs by about 5 %.
    step = np.concatenate([(a - b).ravel() for a, b in zip(model.get_weights(), before)])
    step_restored = np.concatenate(
        [(a - b).ravel() for a, b in zip(restored.get_weights(), before)])
    assert_close_relative(step_restored, step, rtol=1e-2, err_msg="the step after loading")


def test_saved_model_export_serves_same_outputs(tmp_path):
    model = GALD(TINY, ga="aspp", ld="v1", num_classes=4)
    x = _images(1)
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = reloaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-5)
    # the export has a dynamic batch and spatial size and no auxiliary output
    other = reloaded.serve(tf.constant(_images(2, 49, 71)))
    assert other.shape == (2, 49, 71, 4)


def test_fit_trains_main_and_aux_heads():
    model = GALD(TINY, ga="aspp", ld="v2", num_classes=3)
    from keras_gald.losses import SegmentationCrossEntropy

    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SegmentationCrossEntropy())
    x = _images(2)
    y = np.random.default_rng(1).integers(0, 3, size=(2, H, W)).astype("int32")
    aux = model.get_layer("aux_classifier")
    before = keras.ops.convert_to_numpy(aux.kernel).copy()
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, keras.ops.convert_to_numpy(aux.kernel)), \
        "aux head received no gradient"


def test_gradients_reach_every_trainable_weight():
    model = GALD(TINY, ga="aspp", ld="v2", num_classes=3)
    x = _images(1)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_mean(out["logits"] ** 2) + tf.reduce_mean(out["aux_logits"] ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None]
    assert not missing, missing


@pytest.mark.jax
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(backbone="resnet1000"), "unknown backbone 'resnet1000'; valid choices: .*resnet50"),
        (dict(ga="fpn"), "unknown ga 'fpn'; valid choices: 'aspp', 'psp'"),
        (dict(ld="v3"), "unknown ld 'v3'; valid choices: 'v1', 'v2', None"),
        (dict(arrangement="serial"), "unknown arrangement 'serial'"),
        (dict(output_stride=4), "output_stride must be 8, 16 or 32"),
    ],
)
def test_bad_configuration_errors(kwargs, match):
    args = dict(backbone=TINY, num_classes=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GALD(**args)


@pytest.mark.jax
def test_wrong_channel_count_error():
    model = GALD(TINY, ga=None, ld=None, num_classes=3)
    # Keras' input spec names the expected and the received shape.
    with pytest.raises(ValueError, match=r"expected shape=\(None, None, None, 3\), found shape=\(1, 65, 97, 4\)"):
        model(np.zeros((1, 65, 97, 4), "float32"))
    with pytest.raises(ValueError, match=r"expected images with 3 channels \(N, H, W, 3\); got 1 channels"):
        GALD(TINY, ga=None, ld=None, num_classes=3, input_shape=(64, 64, 3))(
            np.zeros((1, 64, 64, 1), "float32")
        )


@pytest.mark.jax
def test_too_small_input_error_names_minimum():
    model = GALD(TINY, ga="aspp", ld="v1", num_classes=3, input_shape=(None, None, 3))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="minimum height and width is 16"):
        model(np.zeros((1, 12, 40, 3), "float32"))
    with pytest.raises(ValueError, match="minimum height and width is 16"):
        GALD(TINY, ga="aspp", ld="v1", num_classes=3, input_shape=(12, 40, 3))


@pytest.mark.parametrize("output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18)),
                                                  (32, (3, 6, 9))])
def test_output_strides(output_stride, rates):
    model = GALD(TINY, ga="aspp", ld="v2", num_classes=2, output_stride=output_stride)
    out = model(_images(), training=True)
    assert out["logits"].shape == (1, H, W, 2)
    # X is at 1/output_stride of the image (stride-2 steps round up: 65x97 -> 9x13 at 8),
    # stage 3 at 1/8 up to output stride 8 and 1/16 beyond; ASPP's rates scale with it.
    backbone_outputs = model.get_layer(TINY)._inbound_nodes[0].output_tensors
    features = keras.Model(model.inputs, backbone_outputs)(_images())
    size = lambda s: (-(-H // s), -(-W // s))  # noqa: E731
    assert tuple(features[1].shape[1:3]) == size(output_stride)
    assert tuple(features[0].shape[1:3]) == size(min(output_stride, 16))
    assert tuple(model.get_layer("ga_aspp").dilation_rates) == rates


def test_auto_aux_loss_follows_the_main_loss():
    """Mixing replica- and global-averaged losses would make a multi-replica step differ
    from the single-device one, so `aux_loss="auto"` copies the main loss's settings."""
    from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy

    model = GALD("resnet_tiny", num_classes=3, head_channels=8, aspp_filters=8)
    model.compile(optimizer="sgd", loss=OHEMCrossEntropy(0.7, 100, ignore_index=7,
                                                         distributed_mean="global"))
    assert isinstance(model.aux_loss, SegmentationCrossEntropy)
    assert (model.aux_loss.ignore_index, model.aux_loss.distributed_mean) == (7, "global")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert (model.aux_loss.ignore_index, model.aux_loss.distributed_mean) == (255, "replica")


def test_aspp_dropout_is_separate_from_the_head_dropout():
    model = GALD("resnet_tiny", ga="aspp", ld=None, num_classes=3, head_channels=8,
                 aspp_filters=8, dropout=0.0, aspp_dropout=0.25)
    assert model.get_layer("ga_aspp").dropout == 0.25
    assert model.get_layer("head_dropout").rate == 0.0
