"""examples/train_on_folder.py runs on a tiny generated folder (RGB-coded masks, one pool)."""

import numpy as np
import pytest

from tests.folder._make import make_folder
from tests.harness import REPO_ROOT, run_python


@pytest.mark.slow
def test_train_on_folder_example(tmp_path):
    data_dir = make_folder(tmp_path / "data", layout="single", rgb=True, train=6, val=2)
    out = tmp_path / "out"
    proc = run_python([REPO_ROOT / "examples" / "train_on_folder.py", data_dir, "--steps", "2",
                       "--batch-size", "2", "--out", out], cwd=tmp_path, timeout=240)
    assert "dataset folder: 3 classes, train 6, val 2 images" in proc.stdout
    assert "validation: {" in proc.stdout and "mean_iou" in proc.stdout
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    x = np.zeros((1, 48, 64, 3), np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (1, 48, 64, 3)
    assert (out / "model.keras").stat().st_size > 100000
