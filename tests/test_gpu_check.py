"""benchmarks/gpu_check.sh on a machine without a GPU: says so, installs nothing, exits 0;
its JAX route (a GPU machine without TensorFlow) runs its checks, here on the CPU."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT
from tests.harness import HIDE_TENSORFLOW, use_fast_xla_compiles


def test_gpu_check_without_a_gpu_exits_0_and_installs_nothing(tmp_path):
    # A PATH where `nvidia-smi` fails, as on a machine with no CUDA driver.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    venv = tmp_path / "venv"
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", GPU_CHECK_VENV=str(venv))
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout and "nothing installed" in proc.stdout
    assert not venv.exists()


FAKE_GPU_SMI = """#!/bin/sh
case "$*" in
    *name,memory*) echo "Fake GPU, 1024 MiB, 0.0" ;;
    *query-gpu=name*) echo "Fake GPU" ;;
    *) echo "GPU 0: Fake GPU (UUID: GPU-0)" ;;
esac
"""


def test_gpu_check_jax_route_runs_its_checks_without_tensorflow(tmp_path):
    """The route for a GPU machine where TensorFlow cannot be installed, run here on
    the CPU (`--device cpu --quick`) with a stand-in `nvidia-smi` and TensorFlow
    hidden from Python: every check of benchmarks/jax_gpu_check.py passes and its
    JSON lands in GPU_CHECK_OUT, not in the repository."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text(FAKE_GPU_SMI)
    (fake_bin / "nvidia-smi").chmod(0o755)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_TENSORFLOW)
    out = tmp_path / "out"
    env = use_fast_xla_compiles(dict(
        os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", PYTHONPATH=str(hide),
        KERAS_BACKEND="jax", GPU_CHECK_ROUTE="jax", GPU_CHECK_PYTHON=sys.executable,
        GPU_CHECK_OUT=str(out), GPU_CHECK_JAX_ARGS="--device cpu --quick --no-torch",
        GPU_CHECK_VENV=str(tmp_path / "venv")))
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "JAX route" in proc.stdout
    report = json.loads((out / "jax_gpu_check_Fake_GPU.json").read_text())
    assert report["failed"] == [] and report["machine"]["tensorflow_imported"] is False
    names = " ".join(row["check"] for row in report["checks"])
    for part in ("conv 3x3 stride 1 rate 12", "ldv2 slices vs patches", "mixed_bfloat16",
                 "fit:", "save_load"):
        assert part in names, names
    assert [(row["config"], row["backend"]) for row in report["speed"]] == [
        ("tiny_aspp_ldv2", "jax")]
    assert not (tmp_path / "venv").exists()
