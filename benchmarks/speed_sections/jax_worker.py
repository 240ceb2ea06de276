"""The JAX side of `speed_sections/jax_backend.py`: a child Python run with
`KERAS_BACKEND=jax` (the backend is fixed per process) that builds one network at a
time and runs one call per request, so the parent can time it in turns with its
TensorFlow and PyTorch twins.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout
(prefixed `JAXWORKER `; anything else on stdout is ignored by the parent):

* `{"op": "build", "config": NAME, "task": "forward" | "train", "batch": B, "size": S}`
  -> `{"ok": true, "backend": "jax", "jax": VERSION}` or `{"error": "..."}`;
* `{"op": "call"}` -> `{"ok": true}` once the call's outputs are on the host;
* `{"op": "quit"}`.

Forward: `jax.jit` of the inference graph's `stateless_call` (Keras' JAX `predict`
compiles the same function; calling it directly leaves out the data adapter). Train:
`Segmenter.compile` as in the TF `train` section (keras_gald SGD momentum 0.9,
SegmentationCrossEntropy ignoring 255, the aux loss by default) and
`model.train_on_batch`, which Keras' JAX trainer compiles with `jax.jit`.
"""

import json
import os
import pathlib
import sys
import traceback

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))


def reply(**message):
    sys.stdout.write("JAXWORKER " + json.dumps(message) + "\n")
    sys.stdout.flush()


def build(request):
    import jax
    import keras
    import numpy as np

    from common.models import CONFIGS, IGNORE_INDEX, build_keras, random_labels

    keras.backend.clear_session()
    cfg = CONFIGS[request["config"]]
    batch, size = int(request["batch"]), int(request["size"])
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    model = build_keras(cfg, size, size)
    if request["task"] == "forward":
        net = model.inference_model() if hasattr(model, "inference_model") else model

        @jax.jit
        def forward(trainable, non_trainable, x):
            return net.stateless_call(trainable, non_trainable, x, training=False)[0]

        trainable = [v.value for v in net.trainable_variables]
        non_trainable = [v.value for v in net.non_trainable_variables]
        x = jax.numpy.asarray(images)

        def call():
            jax.block_until_ready(forward(trainable, non_trainable, x))

        return call
    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    labels = random_labels(rng, batch, size, size)
    model.compile(optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                  loss=SegmentationCrossEntropy(ignore_index=IGNORE_INDEX))

    def call():
        model.train_on_batch(images, labels)  # returns host floats: the step has finished

    return call


def main():
    call = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                return
            if op == "build":
                call = None
                call = build(request)
                import jax

                reply(ok=True, backend=__import__("keras").backend.backend(), jax=jax.__version__)
            elif op == "call":
                call()
                reply(ok=True)
            else:
                reply(error=f"unknown op {op!r}")
        except Exception as exc:  # noqa: BLE001 - the parent records it and goes on
            traceback.print_exc(file=sys.stderr)
            reply(error=f"{type(exc).__name__}: {str(exc)[:300]}")


if __name__ == "__main__":
    main()
