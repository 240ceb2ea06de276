"""examples/train_on_folder.py runs on a tiny generated folder (RGB-coded masks, one pool)."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from tests.folder._make import make_folder

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_train_on_folder_example(tmp_path):
    data_dir = make_folder(tmp_path / "data", layout="single", rgb=True, train=6, val=2)
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_on_folder.py"), str(data_dir),
         "--steps", "2", "--batch-size", "2", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dataset folder: 3 classes, train 6, val 2 images" in proc.stdout
    assert "validation: {" in proc.stdout and "mean_iou" in proc.stdout
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    x = np.zeros((1, 48, 64, 3), np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (1, 48, 64, 3)
    assert (out / "model.keras").stat().st_size > 100000
