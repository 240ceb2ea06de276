"""Exports that run. `model.export(path, format=...)` on a GALD model
and `keras-gald export` give files that run in their runtime (onnxruntime, the
ai-edge-litert interpreter, TF), builtin TFLite ops only; a dynamic-size LiteRT request is
refused up front; a converter error exits non-zero and writes nothing."""

import numpy as np
import pytest

from tests.reliability.conftest import assert_one_line_error, run_cli

H, W = 32, 40


@pytest.fixture(scope="module")
def gald():
    """The issue's model: resnet_tiny + ASPP + LDv2 (dilated convs, LDv2 slices)."""
    import keras

    from keras_gald.models import GALD

    keras.utils.set_random_seed(0)
    model = GALD("resnet_tiny", ga="aspp", ld="v2", num_classes=5, head_channels=8,
                 aspp_filters=8)
    x = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(np.float32)
    return model, x, model.predict(x, verbose=0)


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _run_tflite(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_model_export_onnx_runs_in_onnxruntime(gald, tmp_path):
    import onnxruntime as ort

    model, x, expected = gald
    path = tmp_path / "m.onnx"
    model.export(str(path), format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _close(session.run(None, {session.get_inputs()[0].name: x})[0], expected)
    # Dynamic sizes work in ONNX: another size runs too.
    y = np.random.default_rng(1).normal(size=(2, 48, 24, 3)).astype(np.float32)
    _close(session.run(None, {session.get_inputs()[0].name: y})[0],
           model.predict(y, verbose=0))


def test_model_export_litert_fixed_size_runs_in_litert(gald, tmp_path):
    import keras

    model, x, expected = gald
    path = tmp_path / "m.tflite"
    model.export(str(path), format="litert",
                 input_signature=[keras.InputSpec(shape=(1, H, W, 3), dtype="float32")])
    _close(_run_tflite(path, x), expected)


def test_model_export_litert_dynamic_size_is_refused_up_front(gald, tmp_path):
    model, _, _ = gald
    with pytest.raises(ValueError, match="keras_gald.export.to_tflite"):
        model.export(str(tmp_path / "d.tflite"), format="litert")
    with pytest.raises(ValueError, match="fixed input size"):
        model.export(str(tmp_path / "d.tflite"), format="litert",
                     input_signature=[(1, None, None, 3)])
    with pytest.raises(ValueError, match="keras_gald.export"):
        model.export(str(tmp_path / "m.xyz"), format="openvino")
    assert list(tmp_path.iterdir()) == []


def test_model_export_tf_saved_model_runs(gald, tmp_path):
    import tensorflow as tf

    model, x, expected = gald
    model.export(str(tmp_path / "sm"), format="tf_saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = loaded.serve(tf.constant(x))
    out = out["logits"] if isinstance(out, dict) else out
    _close(np.asarray(out), expected)
    assert not [p for p in tmp_path.iterdir() if p.name != "sm"]  # no temp folder left


def test_export_cli_tflite_needs_input_size_and_runs(finished_run, tmp_path):
    # The shared training run's model (no GA / LD: converts fastest); the GALD blocks'
    # TFLite path is covered by test_model_export_litert_fixed_size_runs_in_litert.
    from keras_gald.io import load_model

    model_path = finished_run / "model.keras"
    x = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(np.float32)
    expected = load_model(model_path).predict(x, verbose=0)
    proc = run_cli("export", "--model", model_path, "--format", "tflite",
                   "--out", tmp_path / "dyn.tflite")
    assert_one_line_error(proc, "export", 2, "--input-size", "Flex")
    assert not (tmp_path / "dyn.tflite").exists()
    proc = run_cli("export", "--model", model_path, "--format", "tflite",
                   "--out", tmp_path / "m.tflite", "--input-size", H, W)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error" not in proc.stdout.lower() + " ".join(
        l for l in proc.stderr.splitlines() if "keras-gald" in l).lower()
    _close(_run_tflite(tmp_path / "m.tflite", x), expected)


def test_tflite_converter_error_is_raised_and_nothing_written(tmp_path):
    """An op with no TFLite builtin (ExtractImagePatches) must not silently become a Flex
    model: builtin-only conversion raises naming the problem, and no file is written."""
    import keras
    import tensorflow as tf

    from keras_gald import export

    class Patches(keras.layers.Layer):
        def call(self, x):
            return tf.image.extract_patches(x, [1, 2, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Patches()(inputs))
    with pytest.raises(export.TFLiteConversionError, match="builtin ops only"):
        export.to_tflite(model, tmp_path / "p.tflite", input_size=(8, 8))
    assert list(tmp_path.iterdir()) == []
