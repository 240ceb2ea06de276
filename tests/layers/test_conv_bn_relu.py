"""keras_gald.layers.conv_bn_relu.ConvBNReLU, and the weight files it must keep loading.

The helper creates the conv and BN under their historical attribute names on
the layer that owns them; the last test proves the point end to end: weight
files written by the code before the helper (commit `OLD_COMMIT`, run from a
`git archive` copy in a child Python) load into models built by this code with
the same outputs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import tarfile  # noqa: E402
import io  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_gald.layers.conv import Conv2D  # noqa: E402
from keras_gald.layers.conv_bn_relu import ConvBNReLU  # noqa: E402
from tests.harness import REPO_ROOT, assert_close_relative, run_python  # noqa: E402
from tests.layers._helpers import random_input, randomize_batch_norms  # noqa: E402

ON_TF = keras.backend.backend() == "tensorflow"
# The last commit whose heads wrote conv -> BN -> ReLU out by hand.
OLD_COMMIT = "160473d"


class Owner(keras.layers.Layer):
    """A layer holding one attached block (`owner=self`) and one in a list."""

    def __init__(self, depthwise=False, **kwargs):
        super().__init__(**kwargs)
        common = dict(strides=2, padding="valid", use_bias=True, depthwise=True) \
            if depthwise else {}
        self.first = ConvBNReLU(6, 3, name="first", owner=self, **common)
        self.rest = [ConvBNReLU(4, 1, name="rest_0", relu=False)]
        self.rest_convs = [block.conv for block in self.rest]
        self.rest_bns = [block.bn for block in self.rest]

    def build(self, input_shape):
        shape = self.first.build(input_shape)
        self.rest[0].build(shape)

    def call(self, x, training=None):
        return self.rest[0](self.first(x, training=training), training=training)


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def numpy_bn(y, bn):
    return (y - to_numpy(bn.moving_mean)) / np.sqrt(to_numpy(bn.moving_variance) + bn.epsilon) \
        * to_numpy(bn.gamma) + to_numpy(bn.beta)


@pytest.mark.jax
def test_sublayers_live_on_the_owner_under_the_historical_names():
    owner = Owner(name="owner")
    owner.build((None, 9, 9, 3))
    assert owner.first_conv is owner.first.conv and owner.first_bn is owner.first.bn
    assert isinstance(owner.first_conv, Conv2D)
    assert owner.first_conv.name == "first_conv" and owner.first_bn.name == "first_bn"
    # Tracked in creation order (conv, BN, then the list's), nothing else: the
    # helper itself holds no state of its own.
    assert [w.path for w in owner.weights] == [
        "owner/first_conv/kernel",
        "owner/first_bn/gamma", "owner/first_bn/beta",
        "owner/first_bn/moving_mean", "owner/first_bn/moving_variance",
        "owner/rest_0_conv/kernel",
        "owner/rest_0_bn/gamma", "owner/rest_0_bn/beta",
        "owner/rest_0_bn/moving_mean", "owner/rest_0_bn/moving_variance",
    ]
    assert (owner.first_bn.epsilon, owner.first_bn.momentum) == (1e-5, 0.9)


@pytest.mark.jax
@pytest.mark.parametrize("depthwise", [False, True])
def test_conv_then_batch_norm_then_relu(depthwise):
    keras.utils.set_random_seed(1)
    owner = Owner(depthwise=depthwise)
    x = random_input((2, 9, 7, 3), seed=2)
    owner.build(x.shape)
    randomize_batch_norms(owner, seed=3)
    if depthwise:
        owner.first_conv.bias.assign(np.linspace(-0.5, 0.5, 3).astype(np.float32))
    actual = to_numpy(owner(x, training=False))

    kernel = to_numpy(owner.first_conv.kernel).astype(np.float64)
    if depthwise:  # 3x3, stride 2, no padding, one filter per channel, bias
        out_h, out_w = (9 - 3) // 2 + 1, (7 - 3) // 2 + 1
        y = np.zeros((2, out_h, out_w, 3))
        for i in range(3):
            for j in range(3):
                y += x[:, i:i + 2 * out_h:2, j:j + 2 * out_w:2] * kernel[i, j, :, 0]
        y += to_numpy(owner.first_conv.bias)
    else:  # 3x3 "same", no bias
        xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = sum(xp[:, i:i + 9, j:j + 7] @ kernel[i, j] for i in range(3) for j in range(3))
    y = np.maximum(numpy_bn(y, owner.first_bn), 0.0)  # ReLU
    y = y @ to_numpy(owner.rest_convs[0].kernel)[0, 0]
    expected = numpy_bn(y, owner.rest_bns[0])  # relu=False: negatives stay
    assert (expected < 0).any()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.jax
def test_zero_gamma_starts_a_residual_branch_at_zero():
    block = ConvBNReLU(5, 1, name="w", relu=False, gamma_initializer="zeros")
    block.build((None, 4, 4, 3))
    y = block(random_input((1, 4, 4, 3)), training=False)
    np.testing.assert_array_equal(to_numpy(y), np.zeros((1, 4, 4, 5)))


# ------------------------------------------------------------ files of the old code
BUILD = '''
import keras
import numpy as np
from keras_gald.layers import ASPP, CGNL, PSP, GALDBlockV1, NonLocal
from keras_gald.models.gald import GALD


def heads_model():
    """Every layer whose conv -> BN -> ReLU became ConvBNReLU, side by side."""
    inputs = keras.Input((None, None, 8))
    outputs = [
        ASPP(filters=8, branch_filters=4, dilation_rates=(1, 2, 3), name="aspp")(inputs),
        PSP(filters=8, bins=(1, 2, 3), name="psp")(inputs),
        NonLocal(inter_channels=4, name="nonlocal")(inputs),
        CGNL(8, groups=4, name="cgnl")(inputs),
        GALDBlockV1(8, groups=4, name="gald_block")(inputs),
    ]
    return keras.Model(inputs, keras.layers.Concatenate()(outputs))


def models():
    return {
        "heads": (heads_model(), (2, 17, 19, 8)),
        **{f"gald_{ga}": (GALD("resnet_tiny", ga=ga, ld="v1", num_classes=3, aux_head=False),
                          (1, 65, 65, 3))
           for ga in ("aspp", "psp", "cgnl")},
    }


def inputs_for(shape):
    return np.random.default_rng(0).standard_normal(shape).astype("float32")
'''

SAVE = BUILD + '''
import sys
import keras_gald

out = sys.argv[1]
assert keras_gald.__file__.startswith(sys.argv[2]), keras_gald.__file__
rng = np.random.default_rng(1)
for name, (model, shape) in models().items():
    for w in model.weights:  # every weight random, BN statistics and NonLocal's gamma too
        positive = w.path.endswith(("gamma", "moving_variance"))
        value = rng.uniform(0.5, 1.5, w.shape) if positive else rng.normal(0, 0.3, w.shape)
        w.assign(value.astype("float32"))
    model.save(f"{out}/{name}.keras")
    model.save_weights(f"{out}/{name}.weights.h5")
    np.save(f"{out}/{name}.npy", keras.ops.convert_to_numpy(model(inputs_for(shape))))
print("saved")
'''


def old_code_copy(destination):
    """Extracts `keras_gald/` of `OLD_COMMIT` into `destination`; skips without it."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", OLD_COMMIT, "keras_gald"],
            capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"commit {OLD_COMMIT} is not available here: {error}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination)
    return destination


@pytest.mark.skipif(not ON_TF, reason="the old code is TensorFlow-only")
def test_weight_files_of_the_old_code_load_with_the_same_outputs(tmp_path):
    old = old_code_copy(tmp_path / "old")
    script = tmp_path / "save_with_old_code.py"
    script.write_text(SAVE)
    run_python([script, tmp_path, old], env={"PYTHONPATH": str(old)}, cwd=tmp_path, timeout=600)

    namespace = {}
    exec(BUILD, namespace)  # noqa: S102 - the same builders, with this code
    for name, (fresh, shape) in namespace["models"]().items():
        x = namespace["inputs_for"](shape)
        expected = np.load(tmp_path / f"{name}.npy")
        loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
        assert_close_relative(to_numpy(loaded(x)), expected, rtol=1e-5, err_msg=f"{name}.keras")
        fresh.load_weights(tmp_path / f"{name}.weights.h5")
        assert_close_relative(to_numpy(fresh(x)), expected, rtol=1e-5,
                              err_msg=f"{name}.weights.h5")
