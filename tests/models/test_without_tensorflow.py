"""On `KERAS_BACKEND=jax` the library runs where TensorFlow is not installed.

A JAX-only machine (a GPU box with CUDA JAX and no TensorFlow wheel, a Python
TensorFlow has no wheel for yet) must still build, train, predict with, save and
load the models; what is TensorFlow's by nature (`keras_gald.data`, `export`,
`evaluation`, `checkpoints`) names the package to install. The child Python
below hides TensorFlow from the import system, as an environment without it
would (`import tensorflow` raises ModuleNotFoundError), and fails if anything
imports it. Its `.keras` file is then loaded here, on TensorFlow, and must give
the same logits.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_gald  # noqa: E402,F401  (registers the library's classes for loading)
from tests.harness import HIDE_TENSORFLOW, assert_close_relative, last_json, run_python  # noqa: E402

# Child: TensorFlow (and what depends on it) hidden; then the whole user path on JAX.
WITHOUT_TENSORFLOW = HIDE_TENSORFLOW + r"""
import json, sys

out = sys.argv[1]

import numpy as np
import keras
import keras_gald as kg

rng = np.random.default_rng(0)
x = rng.normal(size=(2, 40, 48, 3)).astype("float32")
y = rng.integers(0, 4, size=(2, 40, 48)).astype("int32")
y[:, :4] = 255  # ignored pixels
model = kg.models.GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=4)
model.compile(optimizer=kg.optimizers.SGD(kg.optimizers.PolyLR(0.01, 10), momentum=0.9),
              loss=kg.losses.OHEMCrossEntropy(thresh=0.7, min_kept=200, ignore_index=255),
              aux_loss_weight=0.4, metrics=[kg.metrics.MeanIoU(num_classes=4)])
history = model.fit(x, y, epochs=2, batch_size=2, verbose=0).history
logits = model.predict(x, verbose=0)
sliding = kg.inference.predict_sliding(model, x[:1], crop_size=(32, 32))
model.save(out + "/model.keras")
np.save(out + "/x.npy", x)
np.save(out + "/logits.npy", logits)
errors = {}
for name in ("data", "export"):
    try:
        getattr(kg, name)
    except ImportError as error:
        errors[name] = str(error)
print("RESULT " + json.dumps({
    "backend": keras.backend.backend(),
    "losses": [float(v) for v in history["loss"]],
    "logits_shape": list(logits.shape),
    "sliding_shape": list(sliding.shape),
    "errors": errors,
    "tensorflow_imported": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
}))
"""


def test_models_train_predict_save_on_jax_without_tensorflow(tmp_path):
    proc = run_python(["-c", WITHOUT_TENSORFLOW, tmp_path], env={"KERAS_BACKEND": "jax"},
                      timeout=600)
    result = last_json(proc.stdout, "RESULT ")
    assert result["backend"] == "jax"
    assert result["tensorflow_imported"] == []
    assert result["logits_shape"] == [2, 40, 48, 4]
    assert result["sliding_shape"] == [1, 40, 48, 4]
    assert all(np.isfinite(result["losses"])), result["losses"]
    for name in ("data", "export"):
        message = result["errors"].get(name, "")
        assert f"keras_gald.{name} needs TensorFlow" in message, result["errors"]
        assert "pip install" in message and "\n" not in message, message
    # The file written without TensorFlow is an ordinary .keras file: same logits here.
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    x = np.load(tmp_path / "x.npy")
    got = keras.ops.convert_to_numpy(model(x, training=False))
    assert_close_relative(got, np.load(tmp_path / "logits.npy"), rtol=1e-4,
                          err_msg="a .keras file from JAX without TensorFlow, loaded here")


def test_missing_tensorflow_stand_in_names_what_to_install():
    """The stand-in the kernels hold where TensorFlow is absent: one line per use."""
    from keras_gald.ops.optional_tensorflow import _NoTensorFlow

    stand_in = _NoTensorFlow()
    assert not stand_in
    assert not hasattr(stand_in, "__wrapped__")  # inspect / doctest probes stay probes
    with pytest.raises(ImportError) as error:
        stand_in.nn.conv2d  # noqa: B018 - the attribute access is what raises
    message = str(error.value)
    assert message.startswith("tf.nn needs TensorFlow, which is not installed: pip install")
    assert "\n" not in message
