"""Diverging runs, destructive flags, damaged checkpoints, interrupted saves -- through
`keras-gald train` in subprocesses."""

import json
import pathlib
import zipfile

import pytest

from tests.harness import run_python
from tests.reliability.conftest import TINY, assert_one_line_error, listing, run_cli


def _checkpoint_steps(run_dir):
    return sorted(int(p.name[5:-6]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))


# ---------------------------------------------------------------- case 1 + case 2 (--overwrite)
def test_nan_run_stops_keeps_last_finite_checkpoint_and_overwrite_moves_old_run(run_copy):
    """A previous run is moved aside by --overwrite (intact); the new run diverges with a
    huge learning rate: exit 3 naming the step, only finite checkpoints, no final model."""
    before = listing(run_copy)
    old_model = (run_copy / "model.keras").read_bytes()
    proc = run_cli("train", *TINY, "--steps", "8", "--run-dir", run_copy, "--overwrite",
                   "--lr", "1e6", "--set", "keep_checkpoints=1")
    line = assert_one_line_error(proc, "train", 3, "non-finite", "at step",
                                 "kept the last finite checkpoint")
    step = int(line.split("at step ")[1].split(":")[0])
    # The old run is beside it, byte for byte.
    moved = [p for p in run_copy.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1, list(run_copy.parent.iterdir())
    assert listing(moved[0]) == before
    assert (moved[0] / "model.keras").read_bytes() == old_model
    # The new run: no final artefacts, the kept checkpoint is finite and precedes the failure.
    for name in ("model.keras", "metrics.json", "saved_model"):
        assert not (run_copy / name).exists(), name
    steps = _checkpoint_steps(run_copy)
    assert steps and max(steps) < step, (steps, step)
    from keras_gald.checkpoints import checkpoint_is_finite

    kept = run_copy / "checkpoints" / f"ckpt-{max(steps)}"
    assert str(kept) in line
    assert checkpoint_is_finite(str(kept)) is None


# ---------------------------------------------------------------- case 2
def test_no_resume_refuses_to_overwrite_previous_run(run_copy):
    before = {p: (run_copy / p).read_bytes() for p in listing(run_copy)}
    proc = run_cli("train", *TINY, "--run-dir", run_copy, "--no-resume")
    assert_one_line_error(proc, "train", 2, str(run_copy), "--overwrite")
    assert {p: (run_copy / p).read_bytes() for p in listing(run_copy)} == before


def test_no_resume_is_documented_in_help():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--no-resume" in text and "--overwrite" in text and "nothing is deleted" in text
    assert "3 training stopped on a non-finite" in text


# ---------------------------------------------------------------- case 3
def test_resume_skips_damaged_newest_checkpoint(run_copy):
    """ckpt-4's data file has flipped bytes (checksum error): resume names it, moves it
    aside, resumes from ckpt-2, and finishes with a loadable model."""
    data = run_copy / "checkpoints" / "ckpt-4.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))
    (run_copy / "model.keras").unlink()  # so that the final save is observable
    proc = run_cli("train", *TINY, "--run-dir", run_copy)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    skipped = [l for l in proc.stderr.splitlines() if l.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and "ckpt-4" in skipped[0], proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "ckpt-2 at step 2" in proc.stdout
    assert (run_copy / "checkpoints" / "unreadable" / "ckpt-4.index").exists()
    assert zipfile.is_zipfile(run_copy / "model.keras")
    assert json.loads((run_copy / "metrics.json").read_text())["step"] == 4
    # A copied (moved) run resumes without treating the new run dir as a changed config.
    assert not list(run_copy.glob("config.json.old-*"))


def test_no_readable_checkpoint_is_one_line_and_keeps_files(run_copy):
    for index in (run_copy / "checkpoints").glob("ckpt-*.index"):
        index.write_bytes(index.read_bytes()[:20])  # truncated index: "not an sstable"
    before = listing(run_copy)
    proc = run_cli("train", *TINY, "--run-dir", run_copy)
    assert_one_line_error(proc, "train", 2, "no readable checkpoint", "ckpt-4", "ckpt-2",
                          "--overwrite")
    assert listing(run_copy) == before


def test_resume_without_checkpoints_but_finished_run_is_refused(run_copy):
    """Checkpoints deleted by hand: starting over would overwrite model.keras / metrics."""
    for path in (run_copy / "checkpoints").iterdir():
        path.unlink()
    before = listing(run_copy)
    proc = run_cli("train", *TINY, "--run-dir", run_copy)
    assert_one_line_error(proc, "train", 2, "no checkpoint to resume from", "--overwrite")
    assert listing(run_copy) == before


# ---------------------------------------------------------------- case 4
KILL_DURING_SAVE = r"""
import os, signal, sys
import keras
from keras_gald import io

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
original = keras.Model.save

def save_then_die(self, path, *a, **k):
    original(self, path, *a, **k)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # the half-written state of a kill
    os.kill(os.getpid(), signal.SIGKILL)

keras.Model.save = save_then_die
io.save_model(model, sys.argv[1])
"""


def test_kill_during_model_save_leaves_previous_model_intact(tmp_path, finished_run):
    target = tmp_path / "model.keras"
    target.write_bytes((finished_run / "model.keras").read_bytes())
    before = target.read_bytes()
    proc = run_python(["-c", KILL_DURING_SAVE, target], timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert target.read_bytes() == before  # the final name still holds the complete model
    assert zipfile.is_zipfile(target)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.keras"]
    assert all(name.startswith(".model.tmp-") for name in leftovers), leftovers


@pytest.mark.slow
def test_final_artefacts_of_a_run_are_complete(finished_run):
    from keras_gald.io import load_model

    assert load_model(finished_run / "model.keras") is not None
    assert json.loads((finished_run / "metrics.json").read_text())["step"] == 4
    assert json.loads((finished_run / "config.json").read_text())["steps"] == 4
    assert not [p for p in pathlib.Path(finished_run).rglob(".*tmp-*")]


# ---------------------------------------------------------------- found next: changed config
def test_resume_with_another_model_is_one_line_and_keeps_everything(run_copy):
    old_config = (run_copy / "config.json").read_text()
    before = listing(run_copy / "checkpoints")
    proc = run_cli("train", *TINY, "--run-dir", run_copy, "--set", "head_channels=16")
    assert_one_line_error(proc, "train", 2, "resuming this run with a different configuration",
                          "head_channels", "--overwrite")
    assert (run_copy / "config.json").read_text() == old_config
    assert not list(run_copy.glob("config.json.old-*"))
    assert listing(run_copy / "checkpoints") == before
    assert (run_copy / "model.keras").exists()


def test_resume_with_an_allowed_change_keeps_the_old_config_aside(run_copy):
    old_config = (run_copy / "config.json").read_text()
    proc = run_cli("train", *TINY, "--run-dir", run_copy, "--set", "eval_max_images=1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    kept = [p for p in run_copy.iterdir() if p.name.startswith("config.json.old-")]
    assert len(kept) == 1 and kept[0].read_text() == old_config
    assert '"eval_max_images": 1' in (run_copy / "config.json").read_text()


def test_partial_last_log_row_from_a_kill_is_dropped_on_resume(tmp_path):
    from training.train import _truncate_csv

    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,step,train_seconds\n0,1.0,2,3.5\n1,0.9,4,7.0\n2,0.8")
    assert _truncate_csv(log, 6) == 7.0
    assert log.read_text() == "epoch,loss,step,train_seconds\n0,1.0,2,3.5\n1,0.9,4,7.0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # rewritten in place, atomically
