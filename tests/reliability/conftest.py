"""Shared pieces of the reliability suite ("fail loudly, lose nothing").

Every case drives `python -m training.cli ...` in a subprocess, as a user would, and
checks the exit code, the one-line message and what is left on disk. One tiny finished
training run (`finished_run`) is shared by the tests that need a previous run; each test
works on its own copy.
"""

import pathlib
import shutil

import pytest

from tests.harness import run_python


# A model that traces quickly (no GA / LD blocks, no aux head) on 32x32 synthetic scenes.
TINY = [
    "--config", "default",
    "--set", "backbone=resnet_tiny", "--set", "ga=none", "--set", "ld=none",
    "--set", "aux_head=false", "--set", "head_channels=8",
    "--set", "synthetic_size=32,32", "--crop", "32,32", "--set", "scale_range=none",
    "--set", "synthetic_train_images=4", "--set", "synthetic_val_images=1",
    "--batch-size", "2", "--set", "dropout=0", "--set", "export_saved_model=false",
    "--steps", "4", "--checkpoint-every", "2", "--set", "keep_checkpoints=2",
]


def run_cli(*args, timeout=240, cwd=None):
    """`python -m training.cli ARGS` -> CompletedProcess (text)."""
    return run_python(["-m", "training.cli", *args], cwd=cwd, timeout=timeout, check=False)


def error_lines(proc, command):
    return [line for line in proc.stderr.splitlines()
            if line.startswith(f"keras-gald {command}: error:")]


def assert_one_line_error(proc, command, code, *fragments):
    """Exit `code`, exactly one `keras-gald <command>: error: ...` line holding every
    fragment, and no Python traceback."""
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == code, detail
    assert "Traceback" not in proc.stderr, detail
    lines = error_lines(proc, command)
    assert len(lines) == 1, detail
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A completed 4-step run: checkpoints ckpt-2 / ckpt-4, log.csv, model.keras, metrics."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli("train", *TINY, "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of `finished_run` (tests damage or move it)."""
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def listing(root):
    """Relative paths of every file under `root`, sorted (for before/after comparisons)."""
    root = pathlib.Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
