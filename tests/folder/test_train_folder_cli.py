"""`keras-gald train --dataset folder` end to end on a generated RGB-coded folder, then
evaluate / predict / export on its model.keras; config.json round trip and resume checks.

One tiny training run (2 steps, resnet_tiny) is shared by the module.
"""

import dataclasses
import json

import numpy as np
import pytest

from training import cli
from training import config as config_lib
from tests.folder._make import CLASSES, COLOURS, make_folder
from tests.harness import run_python

TINY = ["--set", "steps=2", "--set", "checkpoint_every=2", "--batch-size", "2",
        "--set", "head_channels=8", "--set", "aspp_filters=8", "--set", "export_saved_model=false"]


def train(args, check=True):
    return run_python(["-m", "training.cli", "train", *args], timeout=240, check=check)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder_run")
    data_dir = make_folder(base / "data", layout="single", rgb=True, train=9, val=3)
    run_dir = base / "run"
    # ImageNet-style backbone weights in torchvision's layout (classic stem), as a user has
    from tests.backbones.test_pretrained import random_state, torch_resnet_keys

    weights = base / "tv_resnet_tiny.npz"
    np.savez(weights, **random_state(torch_resnet_keys("resnet_tiny", "classic")))
    proc = train(["--dataset", "folder", "--data-dir", str(data_dir), "--val-fraction", "0.25",
                  "--run-dir", str(run_dir), "--set", "stem=classic",
                  "--set", f"backbone_weights={weights}", *TINY])
    return {"data": data_dir, "run": run_dir, "stdout": proc.stdout}


def test_train_prints_summary_hint_and_iou_table(run):
    out = run["stdout"]
    assert "dataset folder: 3 classes, train 9, val 3 images" in out
    assert "image sizes (HxW): 48..56 x 64..64" in out
    for name in CLASSES:
        assert any(line.startswith(name) and "|" in line for line in out.splitlines()), name
    assert "(ignored)" in out and "hint: these are small CPU settings" in out
    assert "auto_size: crop_size=(48, 64)" in out
    # 17 convs + 17 BNs x 4; skipped: fc.weight, fc.bias and 17 num_batches_tracked
    assert ("backbone weights tv_resnet_tiny.npz [torch_classic]: loaded 85 tensors into 34 "
            "layers; skipped 19 (") in out
    assert "mismatched 0; missing 0" in out
    metrics = json.loads((run["run"] / "metrics.json").read_text())
    assert metrics["step"] == 2 and set(metrics["per_class_iou"]) == set(CLASSES)


def test_split_and_resolved_config_are_saved(run):
    from keras_gald import data

    record = json.loads((run["run"] / "folder_split.json").read_text())
    train_names, val_names = data.split_names([f"img{i:02d}" for i in range(12)], 0.25, seed=0)
    assert record["val"] == val_names and record["train"] == train_names
    saved = config_lib.TrainConfig.from_file(run["run"] / "config.json")
    assert saved.dataset == "folder" and saved.auto_size is False
    assert saved.crop_size == (48, 64) and saved.scale_range == (0.75, 1.25)
    assert saved.val_fraction == 0.25 and saved.steps == 2
    assert json.loads((run["run"] / "dataset_summary.json").read_text())["counts"] == {
        "train": 9, "val": 3}


def test_evaluate_predict_export_on_the_run(run, tmp_path, capsys):
    model = str(run["run"] / "model.keras")
    # evaluate finds the run's split / classes next to the model: the same 3 val images
    assert cli.main(["evaluate", "--model", model, "--dataset", "folder", "--data-dir",
                     str(run["data"]), "--out", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    trained = json.loads((run["run"] / "metrics.json").read_text())
    assert results["num_images"] == 3
    assert results["mean_iou"] == pytest.approx(trained["mean_iou"], abs=1e-6)
    assert cli.main(["predict", "--model", model, str(run["data"] / "images" / "img00.png"),
                     "--out", str(tmp_path / "pr"), "--palette", str(run["data"])]) == 0
    from PIL import Image

    colours = {tuple(c) for c in np.asarray(Image.open(tmp_path / "pr" / "img00_mask.png"))
               .reshape(-1, 3)}
    assert colours <= set(COLOURS)  # the classes.txt colours, not VOC's
    assert cli.main(["export", "--model", model, "--format", "onnx",
                     "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 10000


def test_saved_config_reruns_exactly(run):
    path = run["run"] / "config.json"
    from training.train import build_parser, config_from_args

    again = config_from_args(build_parser().parse_args(["--config", str(path)]))
    assert again == config_lib.TrainConfig.from_file(path)
    moved = config_from_args(build_parser().parse_args(
        ["--config", str(path), "--run-dir", "elsewhere", "--steps", "5"]))
    assert dataclasses.replace(again, run_dir="elsewhere", steps=5) == moved


def test_resume_with_a_different_config_is_refused(run):
    from training import run_setup
    from training.train import build_parser, config_from_args

    args = build_parser().parse_args(["--config", str(run["run"] / "config.json"),
                                      "--set", "lr=0.01", "--set", "backbone=resnet_small"])
    with pytest.raises(ValueError) as err:
        run_setup.prepare_run(config_from_args(args), run_setup.explicit_keys(args))
    message = str(err.value)
    assert "resuming this run with a different configuration" in message
    assert "lr: 0.05 -> 0.01" in message and "backbone: 'resnet_tiny' -> 'resnet_small'" in message
    assert "steps" in message  # the keys resuming may change are listed
    # the refusal left the saved config alone; the same config (or more steps) resumes
    assert config_lib.TrainConfig.from_file(run["run"] / "config.json").lr == 0.05
    args = build_parser().parse_args(["--config", str(run["run"] / "config.json"), "--steps", "4"])
    assert run_setup.prepare_run(config_from_args(args), run_setup.explicit_keys(args)).steps == 4
    assert config_lib.TrainConfig.from_file(run["run"] / "config.json").steps == 4
    # a fresh run with the folder preset resolves auto sizes to the same values: no conflict
    args = build_parser().parse_args(["--dataset", "folder", "--data-dir", str(run["data"]),
                                      "--val-fraction", "0.25", "--run-dir", str(run["run"]),
                                      "--set", "stem=classic", "--set", "backbone_weights="
                                      + config_lib.TrainConfig.from_file(
                                          run["run"] / "config.json").backbone_weights, *TINY])
    assert run_setup.prepare_run(config_from_args(args), run_setup.explicit_keys(args)).steps == 2


@pytest.mark.parametrize("name", config_lib.preset_names())
def test_every_preset_round_trips_through_json(name):
    config = config_lib.get_preset(name)
    config = dataclasses.replace(config, multi_grid=(1, 2, 4), ignore_ids=(0, 255),
                                 scale_range=(0.5, 2.0), val_fraction=None, classes="a,b")
    back = config_lib.TrainConfig.from_json(config.to_json())
    assert back == config
    assert isinstance(back.crop_size, tuple) and isinstance(back.ignore_ids, tuple)


def test_from_json_rejects_unknown_keys_and_converts_numbers():
    text = json.dumps({"lr": 1, "crop_size": [8, 16], "scale_range": None})
    config = config_lib.TrainConfig.from_json(text)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.crop_size == (8, 16) and config.scale_range is None
    with pytest.raises(ValueError, match="unknown config keys bogus"):
        config_lib.TrainConfig.from_json(json.dumps({"bogus": 1}), source="x.json")


def test_resume_conflicts_allow_schedule_and_bookkeeping_keys():
    base = config_lib.get_preset("folder")
    allowed = dataclasses.replace(base, steps=9, stop_at=3, eval_every=0, run_dir="r",
                                  keep_checkpoints=1, notes="n")
    assert config_lib.resume_conflicts(base, allowed) == []
    changed = dataclasses.replace(base, seed=1, crop_size=(8, 8), steps=9)
    assert config_lib.resume_conflicts(base, changed) == ["crop_size", "seed"]
