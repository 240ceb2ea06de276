"""`keras-gald predict` and `keras-gald export` on a tiny saved model."""

import numpy as np
import pytest
from PIL import Image

from training import cli


def test_predict_folder_and_file_writes_masks_overlays_ids(tiny_model_path, tiny_dataset, tmp_path, capsys):
    import keras

    out = tmp_path / "pred"
    single = tiny_dataset / "images" / "img1.png"
    rc = cli.main(["predict", "--model", str(tiny_model_path), str(tiny_dataset / "images"),
                   "--out", str(out), "--palette", "camvid", "--raw-ids"])
    assert rc == 0
    for i, (h, w) in enumerate([(65, 97), (48, 64), (57, 73)]):
        mask = np.asarray(Image.open(out / f"img{i}_mask.png"))
        ids = np.asarray(Image.open(out / f"img{i}_ids.png"))
        assert mask.shape == (h, w, 3) and ids.shape == (h, w)
        assert Image.open(out / f"img{i}_overlay.png").size == (w, h)
    from keras_gald.data import CAMVID_INFO, normalize

    ids = np.asarray(Image.open(out / "img1_ids.png"))
    model = keras.saving.load_model(tiny_model_path, compile=False)
    image = np.asarray(Image.open(single).convert("RGB"))
    expected = model.predict(np.asarray(normalize(image))[None], verbose=0)[0].argmax(-1)
    np.testing.assert_array_equal(ids, expected)
    mask = np.asarray(Image.open(out / "img1_mask.png"))
    np.testing.assert_array_equal(mask, CAMVID_INFO.palette_array[ids])


def test_predict_unreadable_image_is_named(tiny_model_path, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    rc = cli.main(["predict", "--model", str(tiny_model_path), str(bad), "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "cannot read image" in err
    rc = cli.main(["predict", "--model", str(tiny_model_path), str(tmp_path / "missing.png"),
                   "--out", str(tmp_path / "o")])
    assert rc == 1 and "missing.png" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["saved_model", "onnx"])  # TFLite: tests/test_export.py
def test_export_cli(tiny_model_path, tmp_path, fmt):
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(tiny_model_path, compile=False)
    x = np.random.default_rng(0).normal(size=(1, 33, 41, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    out = tmp_path / {"saved_model": "sm", "onnx": "m.onnx", "tflite": "m.tflite"}[fmt]
    argv = ["export", "--model", str(tiny_model_path), "--format", fmt, "--out", str(out)]
    if fmt == "tflite":
        argv += ["--input-size", "33", "41"]
    assert cli.main(argv) == 0
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(out))
        got = loaded.logits(tf.constant(x)).numpy()
    elif fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    else:
        interpreter = tf.lite.Interpreter(model_path=str(out))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
