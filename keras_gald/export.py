"""Export a segmentation model's inference graph (no auxiliary head).

* `to_saved_model(model, path, normalization="imagenet")`: a TF SavedModel with
  - `serving_default` (endpoint `serve`): `images` **uint8 RGB** `(N, H, W, 3)`, any
    `N, H, W`; normalisation happens inside; returns
    `{"class_ids": int32 (N, H, W), "probabilities": float32 (N, H, W, C)}` at the input size;
  - `logits`: `images` **float32, already normalised** `(N, H, W, 3)` -> float32 logits
    `(N, H, W, C)` (the plain network).
  Reload with `tf.saved_model.load(path)`; call `obj.serve(uint8)` / `obj.logits(x)` or
  `obj.signatures["serving_default"](images=...)`.
* `to_onnx(model, path, opset=17)`: via tf2onnx; one input `images` float32 **normalised**
  images `(N, H, W, 3)` (NHWC, batch and spatial dims dynamic) -> one output `logits`
  float32 `(N, H, W, C)`. Normalise as in training (`keras_gald.data.normalize`).
* `to_tflite(model, path)`: float32 TFLite flatbuffer, same input / output as ONNX. The
  input is `(1, H, W, 3)` with dynamic `H, W` when `input_size=None` (call
  `interpreter.resize_tensor_input(0, (1, h, w, 3))` then `allocate_tensors()`), or fixed
  when `input_size=(h, w)`. Builtin ops only by default: a model that needs an op with no
  TFLite builtin (a GALD network at dynamic size needs Flex `Conv2D` / `StridedSlice`) is
  refused with a `TFLiteConversionError` naming the ops, and nothing is written.
  `select_tf_ops=True` opts in to the Flex delegate (the full `tensorflow` pip package
  provides it; `ai_edge_litert` does not).

Every file / folder is written under a temporary name and renamed into place
(`keras_gald.io`), so an interrupted export never leaves a half-written file.

TensorFlow backend only: every format converts a traced TF graph. On another Keras
backend the exporters raise a `ValueError` naming the route: save the model as
`.keras` (same weights on every backend) and export it under `KERAS_BACKEND=tensorflow`.

Example:
    >>> from keras_gald import export
    >>> export.to_saved_model(model, "/tmp/gald_sm")
    >>> export.to_onnx(model, "/tmp/gald.onnx")
    >>> export.to_tflite(model, "/tmp/gald.tflite")
"""

import functools
import os
import pathlib

import tensorflow as tf

from keras_gald.data.normalization import normalize
from keras_gald.ops.portable import portable_ops

from keras_gald.io import atomic_directory, atomic_write_bytes

__all__ = ["to_saved_model", "to_onnx", "to_tflite", "keras_saved_model", "fixed_input_size",
           "TFLiteConversionError", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("saved_model", "onnx", "tflite")


def _portable(export_fn):
    # Every exported graph is traced with plain TF ops only (no XLA-compiled
    # LDv2 primitives): converters need them inlined, servers may lack XLA.
    @functools.wraps(export_fn)
    def wrapper(*args, **kwargs):
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"keras_gald.export.{export_fn.__name__} converts a TensorFlow graph and "
                f"is not available on the {keras.backend.backend()} backend; save the "
                "model (model.save('m.keras')) and export it with TensorFlow: "
                "KERAS_BACKEND=tensorflow keras-gald export --model m.keras "
                "--format saved_model|onnx|tflite --out PATH")
        with portable_ops():
            return export_fn(*args, **kwargs)

    return wrapper


def _inference_model(model):
    getter = getattr(model, "inference_model", None)
    return getter() if callable(getter) else model


def _logits(net, images):
    out = net(images, training=False)
    if isinstance(out, dict):
        out = out["logits"]
    return tf.cast(out, tf.float32)


@_portable
def to_saved_model(model, path, normalization="imagenet"):
    """Writes a SavedModel serving uint8 RGB images (see the module docstring).

    Args:
        model: a `Segmenter` (its inference graph is exported) or a Keras model -> logits.
        path: output directory.
        normalization: what `keras_gald.data.normalize` applies inside the `serve`
            signature (`"imagenet"`, `"bgr_mean"` or `None`), as used for training.

    Returns:
        `path` as a string.
    """
    import keras

    net = _inference_model(model)
    archive = keras.export.ExportArchive()
    archive.track(net)

    def serve(images):
        x = normalize(images, normalization)
        logits = _logits(net, x)
        return {
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    def logits(images):
        return _logits(net, images)

    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint("logits", logits, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    with atomic_directory(path) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return str(path)


@_portable
def keras_saved_model(net, path, verbose=None, input_signature=None, **kwargs):
    """Keras' own `tf_saved_model` export of `net`, traced portably, written atomically."""
    import keras

    with atomic_directory(path) as tmp:
        keras.Model.export(net, str(tmp), format="tf_saved_model", verbose=verbose,
                           input_signature=input_signature, **kwargs)
    return str(path)


class TFLiteConversionError(ValueError):
    """The TFLite converter failed (typically: an op has no TFLite builtin)."""


def fixed_input_size(input_signature):
    """`(h, w)` from a Keras-style `input_signature` (one spec `(N, H, W, C)`); `ValueError`
    when missing or dynamic: builtin-only TFLite needs a fixed size for GALD networks."""
    how = ("pass input_signature=[keras.InputSpec(shape=(1, H, W, 3))] or call "
           "keras_gald.export.to_tflite(model, path, input_size=(H, W))")
    if input_signature is None:
        raise ValueError(f"LiteRT export of a GALD model needs a fixed input size: {how}")
    spec = input_signature
    while isinstance(spec, (list, tuple)) and spec and not isinstance(spec[0], (int, type(None))):
        if len(spec) != 1:
            raise ValueError(f"LiteRT export takes one image input, got {input_signature!r}")
        spec = spec[0]
    shape = tuple(getattr(spec, "shape", spec))
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ValueError(f"LiteRT export of a GALD model needs a fixed input size (got shape "
                         f"{shape}; dynamic sizes need Flex ops): {how}")
    return int(shape[1]), int(shape[2])


def _concrete_logits(model, batch=None, input_size=None):
    net = _inference_model(model)
    h, w = (None, None) if input_size is None else tuple(int(v) for v in input_size)
    spec = tf.TensorSpec([batch, h, w, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def logits(images):
        return {"logits": _logits(net, images)}

    return logits, spec


@_portable
def to_onnx(model, path, opset=17):
    """Writes an ONNX model `images` (normalised float32 NHWC, dynamic N/H/W) -> `logits`.

    Args:
        model: a `Segmenter` or Keras model -> logits.
        path: output `.onnx` file.
        opset: ONNX opset (default 17).

    Returns:
        `path` as a string.
    """
    import tf2onnx

    function, spec = _concrete_logits(model)
    path = pathlib.Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    model_proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec],
                                                   opset=int(opset))
    _explicit_same_pads(model_proto)
    atomic_write_bytes(path, model_proto.SerializeToString())
    return str(path)


def _explicit_same_pads(model_proto):
    """Rewrites `auto_pad=SAME_*` on stride-1 dilated `Conv` nodes as explicit pads.

    tf2onnx maps TF `padding="SAME"` to `auto_pad="SAME_UPPER"`, which onnxruntime's CPU
    Conv kernel rejects with dilations ("Dilation not supported for AutoPadType::SAME_UPPER
    or AutoPadType::SAME_LOWER"). With stride 1 the SAME padding does not depend on the
    input size: `d * (k - 1)` in total per axis, the extra pixel at the end (SAME_UPPER)."""
    from onnx import helper

    inits = {t.name: t for t in model_proto.graph.initializer}
    count = 0
    for node in model_proto.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        dilations = list(attrs.get("dilations", []))
        strides = list(attrs.get("strides", []))
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or not any(d > 1 for d in dilations):
            continue
        if any(s != 1 for s in strides):
            continue
        kernel = attrs.get("kernel_shape")
        if kernel is None and node.input[1] in inits:
            kernel = list(inits[node.input[1]].dims[2:])
        if kernel is None:
            continue
        begin, end = [], []
        for k, d in zip(kernel, dilations):
            total = d * (k - 1)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([helper.make_attribute("pads", begin + end)])
        count += 1
    return count


@_portable
def to_tflite(model, path, input_size=None, select_tf_ops=False):
    """Writes a float32 TFLite model `images (1, H, W, 3)` -> `logits (1, H, W, C)`.

    Args:
        model: a `Segmenter` or Keras model -> logits.
        path: output `.tflite` file.
        input_size: `None` (dynamic `H, W`; resize the interpreter's input) or `(h, w)`.
        select_tf_ops: `False` (default): builtins only; raises `TFLiteConversionError`
            (nothing written) if an op has none. `True`: allow TF ops with no TFLite
            builtin (Flex delegate, which `ai_edge_litert` lacks). `"auto"`: builtins
            if that converts, else Flex (the file may then not run everywhere).

    Returns:
        `path` as a string.
    """
    import tempfile

    import keras

    net = _inference_model(model)
    h, w = (None, None) if input_size is None else tuple(int(v) for v in input_size)
    # Through a SavedModel: `from_concrete_functions` does not bind Keras 3 variables
    # (the flatbuffer then holds uninitialised weights).
    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint("serve", lambda images: {"logits": _logits(net, images)},
                         input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="images")])
    tmp = tempfile.TemporaryDirectory(prefix="keras_gald_tflite_")
    archive.write_out(tmp.name, verbose=False)

    def convert_or_explain(select):
        try:
            return convert(select)
        except Exception as err:  # tf.lite ConverterError & co: keep the converter's reason
            lines = [l.strip() for l in str(err).splitlines() if "error" in l.lower()]
            reason = (lines[-1] if lines else str(err).strip().splitlines()[-1])[:400]
            size = "dynamic H, W" if input_size is None else f"input size {h}x{w}"
            raise TFLiteConversionError(
                f"TFLite conversion ({size}, {'builtins + Flex' if select else 'builtin ops only'}) "
                f"failed: {reason}" + ("; pass input_size=(h, w)" if input_size is None else "")
            ) from err

    def convert(select):
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp.name, signature_keys=["serve"])
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if select:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        return converter.convert()

    try:
        if select_tf_ops == "auto":
            try:
                flatbuffer = convert(False)
            except Exception:  # ConverterError: some op has no builtin kernel
                flatbuffer = convert_or_explain(True)
        else:
            flatbuffer = convert_or_explain(bool(select_tf_ops))
    finally:
        tmp.cleanup()
    path = pathlib.Path(path)
    os.makedirs(path.parent, exist_ok=True)
    atomic_write_bytes(path, flatbuffer)
    return str(path)
