"""The suite's shared harness: fresh-Python subprocesses and relative differences.

Multi-device, multi-worker and command-line checks need a Python process of their
own: a CPU split into logical devices or a `TF_CONFIG` cluster must be set before
TensorFlow initialises, and the CLI is tested as a user runs it. Every such test goes
through `run_python` / `start_python`, which give the child the repository on
`PYTHONPATH`, quiet TensorFlow logs, no inherited `TF_CONFIG`, and (with
`logical_cpus=N`) a CPU split into N logical devices before the target runs.

Example:
    >>> proc = run_python(["-c", "import tensorflow as tf; "
    ...                    "print(len(tf.config.list_logical_devices('CPU')))"],
    ...                   logical_cpus=2)
    >>> proc.stdout.split()[-1]
    '2'
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# XLA:CPU code generation without LLVM's optimisation passes, for JAX test processes only.
# JAX compiles each weight initialiser and each new shape as its own XLA program; at the
# suite's tiny shapes LLVM's passes are most of that time (building a resnet_tiny GALD on
# JAX: 13.3 s with them, 5.3 s without; the JAX pass: 111 s -> 71-85 s). The HLO programs
# are the same; the generated code may round differently (a 3-epoch fit's losses agreed to
# 1e-6), well inside the tests' tolerances, which are unchanged. Added to XLA_FLAGS (e.g.
# `--xla_cpu_max_isa=AVX2`, which runs the suite as an AVX2-only CPU would) unless they set
# the level already. TensorFlow's XLA tests gained nothing from it, so TF processes keep
# the default.
JAX_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


# Python code that makes `import tensorflow` (and tf2onnx, tensorflow_datasets) fail
# as on a machine without TensorFlow (ModuleNotFoundError naming the package); run it
# first in a child (`-c`) or as a `sitecustomize.py` on the child's PYTHONPATH.
HIDE_TENSORFLOW = r"""
import importlib.abc as _abc, sys as _sys

class _HideTensorFlow(_abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf2onnx", "tensorflow_datasets", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

_sys.meta_path.insert(0, _HideTensorFlow())
"""


def use_fast_xla_compiles(env):
    """Adds `JAX_TEST_XLA_FLAGS` to `XLA_FLAGS` in `env` (a mapping) for a JAX process,
    unless `XLA_FLAGS` already sets the optimisation level; returns `env`."""
    flags = env.get("XLA_FLAGS", "")
    if env.get("KERAS_BACKEND") == "jax" and "xla_backend_optimization_level" not in flags:
        env["XLA_FLAGS"] = f"{flags} {JAX_TEST_XLA_FLAGS}".strip()
    return env


def python_env(extra=None):
    """`os.environ` for a child Python: the repository importable, TF logs quiet,
    no `TF_CONFIG` from the parent; then `extra` (which may set `TF_CONFIG`)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return use_fast_xla_compiles(env)


def python_command(args, logical_cpus=0):
    """`[python, ...]` running `args` (`-m MODULE ...`, `-c CODE` or `SCRIPT ...`),
    through `tests/_logical_cpus.py` when `logical_cpus` > 0."""
    args = [str(a) for a in args]
    if logical_cpus:
        return [sys.executable, str(REPO_ROOT / "tests" / "_logical_cpus.py"),
                str(logical_cpus), *args]
    return [sys.executable, *args]


def run_python(args, *, logical_cpus=0, env=None, timeout=300, check=True, cwd=None):
    """Runs a child Python to the end -> `subprocess.CompletedProcess` (text).

    Args:
        args: what follows `python`: `["-m", "training.cli", "train", ...]`,
            `["-c", code]` or `[script, ...]`.
        logical_cpus: split the CPU into this many logical devices first (0: don't).
        env: extra environment variables (`python_env(env)`).
        check: assert exit code 0, showing the tail of the child's output if not.
    """
    proc = subprocess.run(python_command(args, logical_cpus), cwd=cwd or REPO_ROOT,
                          env=python_env(env), capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start_python(args, *, logical_cpus=0, env=None, cwd=None, **popen_kwargs):
    """Starts a child Python like `run_python` and returns its `subprocess.Popen`
    (for runs killed mid-way or run side by side as cluster workers)."""
    return subprocess.Popen(python_command(args, logical_cpus), cwd=cwd or REPO_ROOT,
                            env=python_env(env), **popen_kwargs)


def last_json(stdout, prefix=""):
    """The JSON value on the last line of `stdout` that starts with `prefix`."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len(prefix):])


def max_relative_diff(actual, expected):
    """max |a - e| / max |e| (floored at 1e-12), the largest over the pairs when given
    lists of arrays (e.g. two models' `get_weights()`): the error relative to each
    tensor's own scale."""
    if not isinstance(actual, (list, tuple)):
        actual, expected = [actual], [expected]
    assert len(actual) == len(expected), (len(actual), len(expected))
    worst = 0.0
    for a, e in zip(actual, expected):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        assert a.shape == e.shape, (a.shape, e.shape)
        if e.size:
            scale = max(float(np.abs(e).max()), 1e-12)
            worst = max(worst, float(np.abs(a - e).max()) / scale)
    return worst


def assert_close_relative(actual, expected, rtol=1e-4, err_msg=""):
    """`max_relative_diff(actual, expected) <= rtol`: the error relative to the
    output's scale."""
    diff = max_relative_diff(actual, expected)
    assert diff <= rtol, f"{err_msg} max relative diff {diff:.3g} > {rtol}"


def run_on_two_cpu_replicas(body, timeout=300):
    """Runs the code `body` on a CPU split into 2 logical devices (`json`, `os`, `sys`
    and `tf` imported) and returns the JSON it prints on its last line."""
    code = "import json, os, sys\nimport tensorflow as tf\n" + body
    return last_json(run_python(["-c", code], logical_cpus=2, timeout=timeout).stdout)
