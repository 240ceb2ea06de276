"""`jax` (`--backend jax`): the same network on the JAX backend, timed in turns with
TensorFlow and PyTorch.

The Keras backend is fixed per process, so the JAX model lives in a child Python
(`speed_sections/jax_worker.py`, `KERAS_BACKEND=jax`) that this process drives one
call at a time over a pipe: each round of `common.timing.time_interleaved` calls the
TensorFlow model here, the JAX model there and the PyTorch twin here, so a slow
spell of a shared machine slows all three alike. A JAX call's time includes one
pipe round trip (well under a millisecond, next to seconds for these networks).

Per `--jax-configs` network (default `r50_aspp_ldv2,official_v1_r50`; `--quick`:
`tiny_aspp_ldv2`) two rows per backend:

* `forward`: batch 1 at `--size` (TF: `tf.function`, fp32, as the `forward`
  section's fp32 row; JAX: `jax.jit` of `stateless_call`);
* `train`: one SGD step at `--train-batch` x the training size (as the `train`
  section: keras_gald SGD momentum 0.9, cross-entropy + 0.4 aux loss; TF without
  XLA, its fastest CPU mode; JAX compiles the step with XLA, as Keras always does
  there), one untimed settling step before each timed one.

JAX uses XLA's CPU thread pool (all usable cores); `--threads` sets TF's and
PyTorch's. A JAX build or call that fails (e.g. a layer without a JAX path) is
recorded in its row and the other two backends are still timed.
"""

import gc
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from common.models import (CONFIGS, IGNORE_INDEX, build_keras, build_torch, fresh_session,
                           inference_fn, random_labels, train_size)
from common.report import log, write_json
from common.timing import paired_ratio, sync_tf, time_interleaved

WORKER = pathlib.Path(__file__).resolve().with_name("jax_worker.py")
PREFIX = "JAXWORKER "


class JaxWorker:
    """The child process running `jax_worker.py`; `request(op=...)` -> its reply."""

    def __init__(self):
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def request(self, **message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        raise RuntimeError(f"JAX worker exited (rc {self.proc.wait()})")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.request(op="quit")
            except (BrokenPipeError, RuntimeError):
                pass
            self.proc.wait(timeout=60)


def _jax_call(worker):
    def call():
        answer = worker.request(op="call")
        if "error" in answer:
            raise RuntimeError(answer["error"])

    return call


def _tf_forward(cfg, size):
    import tensorflow as tf

    model = build_keras(cfg, size, size)
    fn = inference_fn(model)
    images = tf.random.uniform((1, size, size, 3), seed=0)
    return lambda: sync_tf(fn(images))


def _tf_train(cfg, batch, size):
    import tensorflow as tf

    from keras_gald.losses import SegmentationCrossEntropy
    from keras_gald.optimizers import SGD

    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((batch, size, size, 3), dtype=np.float32))
    labels = tf.constant(random_labels(rng, batch, size, size))
    model = build_keras(cfg, size, size)
    model.compile(optimizer=SGD(learning_rate=1e-3, momentum=0.9),
                  loss=SegmentationCrossEntropy(ignore_index=IGNORE_INDEX), jit_compile=False)
    return lambda: model.train_on_batch(images, labels)


def _torch_call(args, torch, torch_ref, cfg, task, batch, size):
    if task == "forward":
        from speed_sections.forward import _torch_forward_job

        return _torch_forward_job(args, torch, torch_ref, cfg, size, size)["fns"]["torch_eager"]
    from speed_sections.train import _torch_train_job

    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    return _torch_train_job(args, torch, torch_ref, cfg, images,
                            random_labels(rng, batch, size, size))["fns"]["torch_eager"]


def measure_jax(args, torch, torch_ref, results):
    rows = results.setdefault("jax", [])
    worker = JaxWorker()
    try:
        for name in args.jax_configs:
            cfg = CONFIGS[name]
            for task in ("forward", "train"):
                batch, size = ((1, args.size) if task == "forward"
                               else (args.train_batch, train_size(args, cfg)))
                rows.extend(_measure_one(args, torch, torch_ref, worker, name, cfg, task,
                                         batch, size))
                fresh_session()
                gc.collect()
                write_json(args.json, results)
    finally:
        worker.close()


def _measure_one(args, torch, torch_ref, worker, name, cfg, task, batch, size):
    shape = f"{batch}x{size}x{size}"
    log(f"[jax] {name} {task} {shape} ...")
    base = dict(section=task, config=name, input=shape)
    errors, fns = {}, {}
    try:
        fns["tensorflow"] = _tf_forward(cfg, size) if task == "forward" else _tf_train(
            cfg, batch, size)
    except Exception as exc:  # noqa: BLE001
        errors["tensorflow"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    answer = worker.request(op="build", config=name, task=task, batch=batch, size=size)
    if "error" in answer:
        errors["jax"] = answer["error"]
    else:
        fns["jax"] = _jax_call(worker)
    if torch is not None:
        try:
            fns["torch_eager"] = _torch_call(args, torch, torch_ref, cfg, task, batch, size)
        except Exception as exc:  # noqa: BLE001
            errors["torch_eager"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    stats, times = {}, {}
    settle = 1 if task == "train" else 0
    try:
        if fns:
            stats, times = time_interleaved(fns, args.warmup, args.repeats, settle=settle)
    except Exception as exc:  # noqa: BLE001 - e.g. the JAX call failing after building
        message = f"{type(exc).__name__}: {str(exc)[:300]}"
        if "jax" in fns:  # time the other two without it
            errors["jax"] = message
            del fns["jax"]
            stats, times = time_interleaved(fns, args.warmup, args.repeats, settle=settle)
        else:
            errors.update({backend: message for backend in fns})
    rows = []
    for backend in ("tensorflow", "jax", "torch_eager"):
        if backend not in stats and backend not in errors:
            continue
        row = dict(base, backend=backend, **stats.get(backend, {}))
        if backend in errors:
            row["error"] = errors[backend]
            log(f"    {backend}: FAILED: {row['error']}")
        else:
            log(f"    {backend}: {row['ms']:.1f} ms (first call {row['first_ms']:.0f} ms)")
        rows.append(row)
    jax_row = next((r for r in rows if r["backend"] == "jax" and "ms" in r), None)
    for other in ("tensorflow", "torch_eager"):
        if jax_row is not None and other in times:
            jax_row[f"jax_over_{other}_paired"] = paired_ratio(times["jax"], times[other])
            log(f"    JAX / {other} per round: {jax_row[f'jax_over_{other}_paired']:.3f}")
    return rows
