"""`keras-gald` console script: dispatches to the sub-command modules.

    keras-gald train    ...   -> training.train
    keras-gald evaluate ...   -> training.evaluate
    keras-gald predict  ...   -> training.predict
    keras-gald export   ...   -> training.export
    keras-gald convert  ...   -> training.convert

Each module has `main(argv=None)` and runs on its own as `python -m training.<name>`.
"""

import importlib
import sys

COMMANDS = {
    "train": "training.train",
    "evaluate": "training.evaluate",
    "predict": "training.predict",
    "export": "training.export",
    "convert": "training.convert",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: keras-gald {" + ",".join(COMMANDS) + "} [args...]")
        print("Run `keras-gald <command> --help` for a command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"keras-gald: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
