"""How far float32 gradients of a tiny random-init GALD are from float64 ones.

Explains the tolerance of `tests/training/test_train.py::
test_mirrored_two_logical_cpus_matches_single_device` (checked in float64): if the
single-device float32 gradient is already percent-level away from float64, any change of
summation order -- such as splitting the batch over replicas -- moves weights by as much.

    python benchmarks/grad_precision.py

Builds the test's model (resnet_tiny, ASPP + LDv2, 9 classes, dropout off) once in float32
and once in float64 with the same weights, takes one loss gradient (main + 0.4 aux
cross-entropy, some ignored pixels) on the same 4x48x64 batch, and prints the largest
per-variable relative difference max|g32 - g64| / max|g64|.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_gald.losses import SegmentationCrossEntropy  # noqa: E402
from keras_gald.models import GALD  # noqa: E402


def gradients(dtype, images, labels, weights=None):
    # floatx alone does not change an already-created global dtype policy.
    keras.config.set_floatx(dtype)
    keras.mixed_precision.set_global_policy(dtype)
    try:
        keras.utils.set_random_seed(0)
        model = GALD(backbone="resnet_tiny", num_classes=9, head_channels=16, aspp_filters=8,
                     dropout=0.0, aspp_dropout=0.0)
        if weights is not None:
            model.set_weights([w.astype(dtype) for w in weights])
        loss = SegmentationCrossEntropy()
        with tf.GradientTape() as tape:
            out = model(images.astype(dtype), training=True)
            value = loss(labels, out["logits"]) + 0.4 * loss(labels, out["aux_logits"])
        grads = tape.gradient(value, model.trainable_variables)
        return model, [np.asarray(g, np.float64) for g in grads]
    finally:
        keras.config.set_floatx("float32")
        keras.mixed_precision.set_global_policy("float32")


def main():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 48, 64, 3)).astype("float32")
    labels = rng.integers(0, 9, size=(4, 48, 64)).astype("int32")
    labels[0, :20] = 255
    model32, g32 = gradients("float32", images, labels)
    _, g64 = gradients("float64", images, labels, model32.get_weights())
    rel = [float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) for a, b in zip(g32, g64)]
    order = np.argsort(rel)[::-1]
    print("largest float32-vs-float64 relative gradient differences (single device):")
    for i in order[:5]:
        print(f"  {model32.trainable_variables[i].path:<45} {100 * rel[i]:.2f} %")
    print(f"median over {len(rel)} variables: {100 * float(np.median(rel)):.3f} %")


if __name__ == "__main__":
    main()
