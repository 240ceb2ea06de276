"""Shared test fixtures: locating `../shared`, the authors' fixtures, the kernel policy.

Subprocess runs and relative differences live in `tests/harness.py`.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from tests.harness import use_fast_xla_compiles

use_fast_xla_compiles(os.environ)  # before JAX compiles anything (see tests/harness.py)

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


def _shared_fixture_groups(items):
    """`{item: group name}` joining the tests that share a module- or session-scoped
    fixture of this suite (a training run, a converted checkpoint), transitively."""
    parent = {}

    def find(name):
        while parent.setdefault(name, name) != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    shared = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        names = []
        for name, defs in (info.name2fixturedefs.items() if info else ()):
            fixturedef = defs[-1]
            module = getattr(fixturedef.func, "__module__", "") or ""
            if fixturedef.scope in ("module", "package", "session") and module.startswith("tests"):
                names.append(f"{module}.{name}")
        for name in names[1:]:
            parent[find(name)] = find(names[0])
        if names:
            shared[item] = names[0]
    return {item: find(name) for item, name in shared.items()}


def pytest_collection_modifyitems(config, items):
    """Off TensorFlow only `@pytest.mark.jax` tests run; long runs (`slow`) go first;
    tests sharing a fixture stay together.

    The backend is fixed per process (`KERAS_BACKEND`), and most of the suite tests
    TensorFlow paths (strategies, export, tf.data): under another backend every test
    not marked `jax` is deselected, so `KERAS_BACKEND=jax pytest tests` runs the
    backend-neutral part whatever `-m` says.

    Long training runs first: under the README's `-n 2` both workers then start on
    long runs and the short tests fill in around them, instead of the last long runs
    ending the suite alone.

    Tests sharing a module- or session-scoped fixture (a training run, a converted
    checkpoint) stay next to each other, so that it is built once per process: under
    `-n 2`, `--dist loadfile` (pytest.ini) gives each worker whole files.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        kept = [item for item in items if item.get_closest_marker("jax") is not None]
        deselected = [item for item in items if item.get_closest_marker("jax") is None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept
    groups = _shared_fixture_groups(items)
    # A group stays contiguous (a module-scoped fixture is torn down when the order
    # leaves its module) and goes first if any of its tests is slow.
    unit = {item: groups.get(item, item.nodeid) for item in items}
    first, slow = {}, set()
    for index, item in enumerate(items):
        first.setdefault(unit[item], index)
        if item.get_closest_marker("slow") is not None:
            slow.add(unit[item])
    items.sort(key=lambda item: (unit[item] not in slow, first[unit[item]]))
