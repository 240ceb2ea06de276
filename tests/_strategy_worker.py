"""Subprocess for the tf.distribute tests of keras_gald.metrics / keras_gald.losses.

Run on two logical CPU devices (`tests/harness.py: run_python([this file, INPUT.npz],
logical_cpus=2)`: the split must happen before TensorFlow initialises, hence a
separate process). It builds a 2-replica `MirroredStrategy` and prints one JSON object
on its last stdout line:

* `metric`: `MeanIoU` updated with `strategy.run` over a distributed dataset
  (global batch 4 -> 2 per replica): the cross-replica confusion matrix and
  scores, plus each replica's local confusion-matrix total.
* `evaluate_mean_iou`: the same metric compiled into a weight-free model and
  read from `model.evaluate` under the strategy.
* `losses`: for each loss configuration, the list of per-replica loss values
  when replica `r` gets images `[2r, 2r + 2)` of the input.

The input `.npz` holds `labels (4, H, W)`, `logits (4, h, w, C)` and
`class_weights (C,)`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402

from keras_gald.losses import OHEMCrossEntropy, SegmentationCrossEntropy  # noqa: E402
from keras_gald.metrics import MeanIoU  # noqa: E402

PER_REPLICA = 2


def main(path):
    data = np.load(path)
    labels, logits, class_weights = data["labels"], data["logits"], data["class_weights"]
    num_classes = logits.shape[-1]
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    out = {"num_replicas": strategy.num_replicas_in_sync}

    # -- MeanIoU over a distributed dataset -------------------------------
    with strategy.scope():
        metric = MeanIoU(num_classes)
    dataset = tf.data.Dataset.from_tensor_slices((labels, logits)).batch(
        PER_REPLICA * strategy.num_replicas_in_sync
    )
    dist_dataset = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def update(y, x):
        strategy.run(metric.update_state, args=(y, x))

    for y, x in dist_dataset:
        update(y, x)
    local = strategy.experimental_local_results(metric.total_confusion.value)
    out["metric"] = {
        "confusion": np.asarray(metric.confusion_matrix()).tolist(),
        "mean_iou": float(metric.result()),
        "pixel_accuracy": float(metric.pixel_accuracy()),
        "local_totals": [int(np.asarray(v).sum()) for v in local],
    }

    # -- the metric inside Keras' own evaluate loop -------------------------
    with strategy.scope():
        inputs = keras.Input(logits.shape[1:])
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        model.compile(loss=SegmentationCrossEntropy(), metrics=[MeanIoU(num_classes)])
    logs = model.evaluate(
        logits, labels, batch_size=PER_REPLICA * 2, verbose=0, return_dict=True
    )
    out["evaluate_mean_iou"] = float(logs["mean_iou"])

    # -- losses: replica r gets images [2r, 2r + 2) --------------------------
    def per_replica(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(
                array[ctx.replica_id_in_sync_group * PER_REPLICA:
                      (ctx.replica_id_in_sync_group + 1) * PER_REPLICA]
            )
        )

    y_dist, x_dist = per_replica(labels), per_replica(logits)
    configs = {
        "ce_replica": lambda: SegmentationCrossEntropy(class_weights=class_weights),
        "ce_global": lambda: SegmentationCrossEntropy(
            class_weights=class_weights, distributed_mean="global"
        ),
        "ohem_replica": lambda: OHEMCrossEntropy(thresh=0.7, min_kept=50),
        "ohem_global": lambda: OHEMCrossEntropy(
            thresh=0.7, min_kept=50, distributed_mean="global"
        ),
    }
    out["losses"] = {}
    for key, make in configs.items():
        loss_fn = make()

        @tf.function
        def run(y, x, loss_fn=loss_fn):
            return strategy.run(loss_fn, args=(y, x))

        values = strategy.experimental_local_results(run(y_dist, x_dist))
        out["losses"][key] = [float(v) for v in values]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
