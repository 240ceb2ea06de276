"""`Segmenter`: a functional segmentation network whose auxiliary head exists
for training only.

The network graph has a dict of outputs: `"logits"` (float32, at the input
resolution) and, when the model has an auxiliary head, `"aux_logits"` (float32,
at the stage-3 feature resolution; the loss upsamples it to the label size).
Called with `training=True` the model returns that dict so `fit` can add the
auxiliary loss; called for inference (`predict`, `model(x)`, `export`) it runs
a sub-graph that stops at the main logits, so the auxiliary head is neither
computed nor exported.

XLA under a multi-replica `tf.distribute` strategy
--------------------------------------------------
Keras compiles `fit`'s whole step -- `strategy.run` included -- when
`jit_compile=True`, which XLA cannot do across devices. `Segmenter.compile`
therefore turns that case into a per-replica compiled step: on each replica an
XLA function runs the forward pass, the losses and the backward pass; the
gradient all-reduce, the optimizer update and the metrics run outside it, as in
Keras' own step. Cross-replica collectives cannot run inside that function, so:

* BatchNorm normalises each replica's sub-batch with its own statistics (a
  model built with `SyncBatchNormalization` is refused -- build it with
  `sync_bn=False`, or train without XLA to keep SyncBN);
* losses with `distributed_mean="global"` are refused (their denominator is an
  all-reduce); `"replica"` works;
* after each step the per-replica BatchNorm moving statistics (floating-point
  non-trainable variables outside SyncBN layers) are averaged over the replicas, so all replicas hold
  the same weights. The non-compiled multi-replica step does the same, so both
  paths train the same model.

Other backends (JAX)
--------------------
The strategy code above is TensorFlow's (`tf.distribute`); TensorFlow is imported
only on that backend. On JAX, Keras' own functional `train_step(state, data)` /
`test_step` run unchanged around this class's backend-neutral `compute_loss`
(main + auxiliary loss) and `compute_metrics` (main logits). What only exists
on TensorFlow is refused with a one-line `ValueError`: synchronized BatchNorm
(cross-replica all-reduce) by the model factories (`check_sync_bn_backend`) and
at `compile`; several devices or a cluster by `keras_gald.distribute`; `export`
(TensorFlow's converters) names the `KERAS_BACKEND=tensorflow` command instead.
"""

import keras

from keras_gald.losses import SegmentationCrossEntropy


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def check_sync_bn_backend(sync_bn):
    """Raises a clear `ValueError` for `sync_bn=True` off TensorFlow.

    Synchronized BatchNorm all-reduces its statistics over a `tf.distribute`
    strategy's replicas; Keras has it on TensorFlow only (elsewhere it fails deep
    inside the first BatchNorm layer). Model factories call this first.
    """
    if sync_bn and not _on_tensorflow():
        raise ValueError(
            "sync_bn=True (synchronized BatchNorm across tf.distribute replicas) is "
            f"TensorFlow-only; on the {keras.backend.backend()} backend build the model "
            "with sync_bn=False, or train with KERAS_BACKEND=tensorflow.")


def _tf():
    # TensorFlow only where the TF-only strategy code runs: JAX users never import it here.
    import tensorflow as tf

    return tf


@keras.saving.register_keras_serializable(package="keras_gald")
class Segmenter(keras.Model):
    """Functional segmentation model: images -> per-pixel class logits.

    Build it with a factory (`keras_gald.models.GALD`,
    `keras_gald.models.official_gald_v1`) rather than by hand.

    Args:
        inputs: the network's `keras.Input`, `(N, H, W, 3)`.
        outputs: dict with `"logits"` `(N, H', W', num_classes)` and optionally
            `"aux_logits"` `(N, h, w, num_classes)`.
        name: model name.

    Calling it:
        `model(images)` -> float32 logits `(N, H', W', num_classes)`;
        `model(images, training=True)` -> the dict of outputs.

    Training: `compile(aux_loss=..., aux_loss_weight=0.4, loss=..., ...)`; the
    total loss is `loss(y, logits) + aux_loss_weight * aux_loss(y, aux_logits)`.
    Metrics see the main logits only.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        if not isinstance(outputs, dict) or "logits" not in outputs:
            raise ValueError(
                "Segmenter outputs must be a dict with a 'logits' entry (and "
                f"optionally 'aux_logits'); got {type(outputs).__name__}"
            )
        unknown = set(outputs) - {"logits", "aux_logits"}
        if unknown:
            raise ValueError(f"Segmenter outputs: unknown keys {sorted(unknown)}")
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        # A sub-graph sharing the same layers; kept out of Keras' tracking so
        # weights are saved once, under the full graph.
        self.__dict__["_logits_model"] = keras.Model(
            inputs=inputs, outputs=outputs["logits"], name=f"{self.name}_logits"
        )
        self.aux_loss = None
        self.aux_loss_weight = 0.0

    @property
    def has_aux_head(self):
        return "aux_logits" in self.output_names or (
            isinstance(self.output, dict) and "aux_logits" in self.output
        )

    @property
    def num_classes(self):
        return int(self._logits_model.output.shape[-1])

    def inference_model(self):
        """The functional model `images -> logits` without the auxiliary head."""
        return self._logits_model

    def call(self, inputs, training=None, mask=None):
        if training:
            return super().call(inputs, training=training, mask=mask)
        return self._logits_model(inputs, training=training)

    def compile(self, *args, aux_loss="auto", aux_loss_weight=0.4, jit_compile="auto", **kwargs):
        """`keras.Model.compile` plus the auxiliary loss.

        Args:
            aux_loss: loss applied to `aux_logits`; `"auto"` is cross-entropy
                (the authors' recipe, also when the main loss is OHEM) with the
                main loss's `ignore_index` and `distributed_mean` when the
                main loss is a keras_gald loss (else ignore label 255,
                per-replica mean); `None` disables it.
            aux_loss_weight: its weight (0.4 in the paper's recipe).
            jit_compile: as in `keras.Model.compile`; `True` under a strategy
                with several replicas compiles a per-replica step (see the
                module docstring) instead of Keras' whole-step compilation.
            *args, **kwargs: forwarded to `keras.Model.compile`; `loss`
                applies to the main logits.

        Raises:
            ValueError: `jit_compile=True` under several replicas with a
                SyncBN model or a `distributed_mean="global"` loss; on a
                backend other than TensorFlow, a SyncBN model (the
                cross-replica all-reduce is TensorFlow's).
        """
        if _on_tensorflow():
            replicas = _tf().distribute.get_strategy().num_replicas_in_sync
        else:
            self._check_backend_support()
            replicas = 1
        replica_xla = jit_compile is True and replicas > 1
        super().compile(*args, jit_compile=False if replica_xla else jit_compile, **kwargs)
        if aux_loss == "auto":
            # Same replica-averaging as the main loss: mixing "global" and "replica"
            # would make a multi-replica step differ from the single-device one.
            main = kwargs.get("loss", args[1] if len(args) > 1 else None)
            aux_loss = SegmentationCrossEntropy(
                ignore_index=getattr(main, "ignore_index", 255),
                distributed_mean=getattr(main, "distributed_mean", "replica"),
            )
        self.aux_loss = aux_loss if self.has_aux_head else None
        self.aux_loss_weight = float(aux_loss_weight)
        self._jit_compile_argument = jit_compile
        self._replica_xla_step = None
        if replica_xla:
            self._check_replica_xla(self.loss, replicas)
            # Created once here: replicas trace `train_step` concurrently.
            self._replica_xla_step = _tf().function(
                self._forward_backward, jit_compile=True, reduce_retracing=True)

    def get_compile_config(self):
        """Keras' compile config plus the auxiliary loss, its weight and the
        `jit_compile` asked for, so that a saved compiled model loads compiled
        (`keras.saving.load_model`) and trains on as before."""
        config = super().get_compile_config()
        if config:
            config = dict(config, aux_loss=keras.saving.serialize_keras_object(self.aux_loss),
                          aux_loss_weight=self.aux_loss_weight,
                          jit_compile=self._jit_compile_argument)
        return config

    def compile_from_config(self, config):
        """Compiles with a config from `get_compile_config` (what loading calls)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)  # its saved state loads next

    @property
    def replica_xla(self):
        """True when training runs a per-replica XLA-compiled step."""
        return getattr(self, "_replica_xla_step", None) is not None

    def _synchronized_layers(self):
        return sorted(layer.name for layer in self._flatten_layers()
                      if getattr(layer, "synchronized", False))

    def _check_backend_support(self):
        """Refuses, off TensorFlow, what only the TensorFlow trainer implements."""
        backend = keras.backend.backend()
        sync = self._synchronized_layers()
        if sync:
            # Keras' BatchNormalization ignores `synchronized` off TensorFlow: training
            # would silently use per-device statistics.
            raise ValueError(
                f"synchronized BatchNorm (sync_bn=True, e.g. layer {sync[0]!r}) is "
                f"TensorFlow-only; on the {backend} backend build the model with "
                "sync_bn=False, or train with KERAS_BACKEND=tensorflow.")

    def _check_replica_xla(self, loss, replicas):
        sync = self._synchronized_layers()
        if sync:
            raise ValueError(
                f"jit_compile=True over {replicas} replicas compiles each replica's step "
                "with XLA, which cannot run SyncBatchNorm's cross-replica all-reduce; "
                f"this model has {len(sync)} synchronized BatchNorm layers (e.g. "
                f"{sync[0]!r}). Build it with sync_bn=False (per-replica statistics) or "
                "compile with jit_compile=False to keep SyncBN.")
        for role, fn in (("loss", loss), ("aux_loss", self.aux_loss)):
            if getattr(fn, "distributed_mean", None) == "global":
                raise ValueError(
                    f"jit_compile=True over {replicas} replicas: the {role} uses "
                    "distributed_mean='global', whose denominator is an all-reduce that a "
                    "per-replica compiled step cannot run; use distributed_mean='replica' "
                    "or jit_compile=False.")

    def _symbolic_build(self, *args, **kwargs):
        super()._symbolic_build(*args, **kwargs)
        self._symbolically_built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras' `fit` builds the compiled metrics from
        # one batch it pulls off the training iterator and drops (a lost training
        # batch), and its MEAN-reduce of that batch fails under
        # MultiWorkerMirroredStrategy. After an explicit `_symbolic_build` (as
        # `training.train` does with KerasTensors) nothing is left to build.
        if getattr(self, "_symbolically_built", False):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, *args):
        # Keras' JAX trainer calls `train_step(state, data)` (functional): its own step
        # already goes through `compute_loss` / `compute_metrics` below.
        if not _on_tensorflow():
            return super().train_step(*args)
        (data,) = args
        if self.replica_xla:
            logs = self._replica_xla_train_step(data)
        else:
            logs = super().train_step(data)
        self._average_replica_state()
        return _rank1_logs_for_multi_worker(logs)

    def _forward_backward(self, x, y, sample_weight):
        """Loss, gradients and outputs of one replica's batch (compiled with XLA)."""
        tf = _tf()
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            scaled = self.optimizer.scale_loss(loss) if self.optimizer is not None else loss
        return loss, tape.gradient(scaled, self.trainable_weights), y_pred

    def _replica_xla_train_step(self, data):
        # Keras' TF `train_step` with the forward/backward pass swapped for the
        # compiled function; the gradient all-reduce stays in `apply_gradients`.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        loss, grads, y_pred = self._replica_xla_step(x, y, sample_weight)
        tf = _tf()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Losses arrive pre-divided by the replica count (Keras sums replicas' losses).
        self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(x)[0])
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _average_replica_state(self):
        """Averages BN moving statistics over replicas (no-op on one replica).

        Without SyncBN each replica updates its own copy from its own sub-batch
        (PyTorch DDP keeps rank 0's); the mean keeps every replica identical and
        uses the whole global batch.
        """
        tf = _tf()
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return
        # SyncBN statistics are already identical on every replica: no all-reduce.
        synced = {id(v) for layer in self._flatten_layers()
                  if getattr(layer, "synchronized", False) for v in layer.variables}
        state = [v for v in self.non_trainable_variables
                 if tf.as_dtype(v.dtype).is_floating and id(v) not in synced]
        if not state:
            return
        means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in state])
        for v, mean in zip(state, means):
            v.assign(mean)

    def test_step(self, *args):
        if not _on_tensorflow():  # JAX: `test_step(state, data)`
            return super().test_step(*args)
        return _rank1_logs_for_multi_worker(super().test_step(*args))

    @staticmethod
    def _split(y_pred):
        if isinstance(y_pred, dict):
            return y_pred["logits"], y_pred.get("aux_logits")
        return y_pred, None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logits, aux_logits = self._split(y_pred)
        loss = super().compute_loss(x, y, logits, sample_weight, training=training)
        if aux_logits is not None and self.aux_loss is not None and self.aux_loss_weight:
            aux = self.aux_loss(y, aux_logits, sample_weight)
            # Keras returns the main loss in floatx; the aux loss keeps the logits' dtype.
            loss = loss + self.aux_loss_weight * keras.ops.cast(aux, loss.dtype)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits, _ = self._split(y_pred)
        return super().compute_metrics(x, y, logits, sample_weight)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Exports the inference graph (no auxiliary head) in a form that runs.

        Keras' own exporters trace the XLA-compiled fast paths and map dilated SAME
        convolutions to ONNX `auto_pad`, which onnxruntime rejects; for dynamic sizes
        the LiteRT converter falls back to Flex ops. So each format is routed through
        `keras_gald.export`, which traces under `portable_ops()`:

        * `"tf_saved_model"`: Keras' SavedModel export of the logits model (endpoint
          `serve`, float32 normalised images -> logits), traced portably and written
          to a temporary folder that is renamed into place.
        * `"onnx"`: `keras_gald.export.to_onnx` (`opset_version=` kwarg, default 17).
        * `"litert"` / `"tflite"`: `keras_gald.export.to_tflite`, builtin ops only;
          `input_signature` must fix the height and width, e.g.
          `[keras.InputSpec(shape=(1, 256, 256, 3))]` (dynamic sizes need Flex ops
          and are refused before converting).

        Other formats raise `ValueError`. Every format converts through TensorFlow,
        so on another backend this raises a `ValueError` naming the TensorFlow route
        (the `.keras` file loads there with the same weights).
        """
        if not _on_tensorflow():
            raise ValueError(
                f"GALD export converts through TensorFlow and is not available on the "
                f"{keras.backend.backend()} backend; save the model (model.save('m.keras')) "
                "and export it with TensorFlow: KERAS_BACKEND=tensorflow keras-gald export "
                "--model m.keras --format saved_model|onnx|tflite --out PATH")
        # `keras_gald.export` depends only on `layers` / `data`, not on `models`, so this
        # call-time import adds no cycle.
        from keras_gald import export as export_lib

        if format == "tf_saved_model":
            return export_lib.keras_saved_model(
                self._logits_model, filepath, verbose=verbose,
                input_signature=input_signature, **kwargs)
        if format == "onnx":
            unknown = set(kwargs) - {"opset_version"}
            if unknown or input_signature is not None:
                raise ValueError(
                    f"GALD ONNX export takes only opset_version (got {sorted(unknown)}, "
                    f"input_signature={input_signature!r}); for more control call "
                    "keras_gald.export.to_onnx(model, path, opset=...)")
            return export_lib.to_onnx(self, filepath, opset=kwargs.get("opset_version") or 17)
        if format in ("litert", "tflite"):
            if kwargs:
                raise ValueError(f"GALD LiteRT export takes no extra options, got {sorted(kwargs)}; "
                                 "call keras_gald.export.to_tflite(model, path, input_size=(h, w))")
            return export_lib.to_tflite(
                self, filepath, input_size=export_lib.fixed_input_size(input_signature))
        raise ValueError(
            f"export format {format!r} is not supported for GALD models; use 'tf_saved_model', "
            "'onnx' or 'litert', or keras_gald.export.to_saved_model / to_onnx / to_tflite")


def _rank1_logs_for_multi_worker(logs):
    """Scalar step logs as shape `(1,)` under multi-worker `MultiWorkerMirroredStrategy`.

    Keras 3's TF trainer reduces each replica's logs with
    `strategy.reduce("MEAN", value, axis=0)` in multi-worker mode, which fails on
    scalars ("Invalid reduction dimension 0 for input with 0 dimensions"); a `(1,)`
    value reduces over that axis to the same scalar mean.
    """
    tf = _tf()
    strategy = tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and getattr(
        extended, "_in_multi_worker_mode", lambda: False)()
    if not multi_worker or not isinstance(logs, dict):
        return logs
    return {k: (tf.reshape(v, [1]) if getattr(v, "shape", None) is not None
                and len(v.shape) == 0 else v) for k, v in logs.items()}

