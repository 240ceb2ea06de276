"""keras_gald.data stays independent of the model code (CONTRIBUTING: never imports models)."""

import ast
import pathlib

import keras_gald.data

FORBIDDEN = ("keras_gald.models", "keras_gald.backbones", "keras_gald.layers", "keras_cv", "training")


def test_data_modules_import_no_model_code():
    package = pathlib.Path(keras_gald.data.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
