"""Real-data check: a small GALD (resnet_small + ASPP + LDv1, the `camvid` recipe, 300
steps) trained from scratch on CamVid (../shared) on 2 CPU cores (2.7 min for seed 0 in
benchmarks/camvid_ablation.py; 7 min inside a test run on a loaded machine), at low
resolution, must reach a validation mIoU far above chance. The same model over 3
seeds in benchmarks/camvid_ablation.py: 26.56 +- 1.43 % (lowest 25.1 %).

Chance is measured, not assumed: a predictor drawing each pixel's class uniformly at
random over the 11 classes, scored with the same MeanIoU on the same validation labels
(about 0.05: each class IoU ~ p_c / (1 + 11 p_c - p_c) for class frequency p_c).
Bar: mIoU >= 0.18 and >= 4x that chance level.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from tests.conftest import CAMVID_DIR, require_shared

REPO = pathlib.Path(__file__).resolve().parents[2]
BAR = 0.18
CHANCE_FACTOR = 4.0


def random_chance_miou(root, max_images):
    from keras_gald import data
    from keras_gald.metrics import MeanIoU

    ds = data.make_eval_dataset(data.camvid(root, "val"))
    metric = MeanIoU(11, from_logits=False)
    rng = np.random.default_rng(0)
    for i, (_, masks) in enumerate(ds):
        if i >= max_images:
            break
        metric.update_state(masks, rng.integers(0, 11, size=masks.shape, dtype=np.int32))
    return float(metric.result())


def test_camvid_small_gald_learns(tmp_path):
    root = require_shared(CAMVID_DIR)
    run_dir = tmp_path / "camvid"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--config", "camvid", "--data-dir", str(root),
         "--run-dir", str(run_dir), "--set", "export_saved_model=false", "--set", "ld=v1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chance = random_chance_miou(root, max_images=101)
    print(f"camvid: mIoU {metrics['mean_iou']:.4f}, random chance {chance:.4f}, {elapsed:.0f}s")
    assert 0.02 < chance < 0.08, chance
    assert metrics["mean_iou"] >= BAR, metrics
    assert metrics["mean_iou"] >= CHANCE_FACTOR * chance, (metrics["mean_iou"], chance)
