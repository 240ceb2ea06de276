"""benchmarks/gpu_check.sh on a machine without a GPU: says so, installs nothing, exits 0."""

import os
import subprocess

from tests.conftest import REPO_ROOT


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
