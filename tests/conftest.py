"""Shared test helpers: locating `../shared` and loading the authors' fixtures."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("KERAS_GALD_SHARED", REPO_ROOT.parent / "shared"))
OFFICIAL_DIR = SHARED_DIR / "fixtures" / "official_gald_v1"
CAMVID_DIR = SHARED_DIR / "data" / "camvid"


def require_shared(path):
    """Skips (or fails under KERAS_GALD_REQUIRE_SHARED=1) when `path` is absent."""
    path = pathlib.Path(path)
    if path.exists():
        return path
    message = f"{path} is absent: tests that read ../shared need the project's shared folder"
    if os.environ.get("KERAS_GALD_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (KERAS_GALD_REQUIRE_SHARED=1)")
    pytest.skip(message)


class OfficialFixture:
    """One `.npz` of the authors' module fixtures.

    Attributes:
        state_dict: `{key: np.ndarray}` of the PyTorch module.
        cases: list of `(input_nhwc, output_nhwc)` float32 pairs.
        meta: the fixture's constructor arguments.
    """

    def __init__(self, name):
        path = require_shared(OFFICIAL_DIR / f"{name}.npz")
        data = np.load(path, allow_pickle=False)
        self.state_dict = {
            k[len("state_dict/"):]: data[k] for k in data.files if k.startswith("state_dict/")
        }
        n_cases = len([k for k in data.files if k.startswith("inputs/")])
        self.cases = [
            (
                np.transpose(data[f"inputs/{i}"], (0, 2, 3, 1)),
                np.transpose(data[f"outputs/{i}"], (0, 2, 3, 1)),
            )
            for i in range(n_cases)
        ]
        self.meta = json.loads(str(data["meta"])) if "meta" in data.files else {}


@pytest.fixture
def official_fixture():
    return OfficialFixture


@pytest.fixture
def kernel_policy():
    """`kernel_policy(**changes)` enters `keras_gald.ops.Policy.current().replace(**changes)`
    until the end of the test (the kernels read it when graphs are traced)."""
    import contextlib

    from keras_gald.ops import Policy

    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(Policy.current().replace(**changes))


def assert_close_relative(actual, expected, rtol=1e-4, err_msg=""):
    """max|a - e| <= rtol * max|e| (the issue's 'relative to the output's scale')."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max()
    assert err <= rtol * scale, f"{err_msg} max abs diff {err:.3g} > {rtol} * scale {scale:.3g}"


_TWO_CPU_PREAMBLE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {repo!r})
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_on_two_cpu_replicas(body, timeout=300):
    """Runs `body` in a fresh Python whose CPU is split into 2 logical devices
    (that must happen before TF starts, hence a subprocess; `json`, `os`, `sys`
    and `tf` are imported) and returns the JSON it prints on its last line."""
    script = _TWO_CPU_PREAMBLE.format(repo=str(REPO_ROOT)) + body
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
