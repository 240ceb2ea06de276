"""How every `keras-gald` command reports failure.

Exit codes (documented in each command's `--help`):

    0  success
    1  the command ran but failed on some of its inputs (e.g. `predict` could not read
       some images, an export's converter reported an error, a checkpoint does not fit)
    2  user error: bad flags, config or paths; nothing was built or written.
       One line on stderr: `keras-gald <cmd>: error: <message>`
    3  training stopped on a non-finite loss or non-finite weights (the last finite
       checkpoint is kept; no final model / export / metrics are written)

Real bugs keep their Python traceback; `--debug` shows tracebacks for user errors too.
"""

import argparse
import functools
import sys

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NON_FINITE = 3

EXIT_CODES_HELP = (
    "exit status: 0 success; 1 failed on some inputs or conversion error; "
    "2 usage / config / file error (one line on stderr, nothing written); "
    "3 training stopped on a non-finite loss or weights. --debug: tracebacks for all errors."
)


class UserError(Exception):
    """A problem the user can fix (flags, config, paths, input files): exit 2, one line."""

    exit_code = EXIT_USAGE


class CommandFailed(Exception):
    """The command ran and failed in a way already explained to the user: exit 1."""

    exit_code = EXIT_FAILED


class NonFiniteStop(Exception):
    """Training stopped on a non-finite value: exit 3."""

    exit_code = EXIT_NON_FINITE


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for user errors too")
    return parser


def _one_line(err):
    text = " ".join(str(err).split())
    return text or type(err).__name__


def command(prog):
    """Decorator for a command's `main(argv)`: maps `UserError` & co. to one line + exit code.

    Library errors that are user errors by nature (a `keras_gald.io.ModelFileError`,
    `keras_gald.data.DataLayoutError`) are converted as well; everything else
    propagates with its traceback.
    """

    def decorate(main):
        @functools.wraps(main)
        def wrapper(argv=None):
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = "--debug" in argv
            try:
                return main(argv)
            except Exception as err:
                # Looked up now, not before `main`: the library modules load lazily.
                user_types = (UserError, CommandFailed, NonFiniteStop) + _library_user_errors()
                if debug or not isinstance(err, user_types):
                    raise
                print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
                return getattr(err, "exit_code", EXIT_USAGE)

        return wrapper

    return decorate


def _library_user_errors():
    # Imported lazily: the library pulls in TensorFlow, which `--help` should not wait for.
    types = []
    if "keras_gald.io" in sys.modules:
        types.append(sys.modules["keras_gald.io"].ModelFileError)
    if "keras_gald.data.info" in sys.modules:
        types.append(sys.modules["keras_gald.data.info"].DataLayoutError)
    if "keras_gald.checkpoints" in sys.modules:
        types.append(sys.modules["keras_gald.checkpoints"].CheckpointUnreadableError)
    return tuple(types)


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (no usage block), exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def data_assertion(err):
    """The one-line message of a `tf.debugging.Assert` raised by the data pipeline (e.g.
    "image file is truncated (no end marker): data/images/a.jpg"), or `None` when `err`
    is not one (then it is a bug and keeps its traceback)."""
    text = str(getattr(err, "message", "") or err)
    marker = "assertion failed:"
    if marker not in text:
        return None
    body = text.split(marker, 1)[1].strip().splitlines()[0]
    # TF prints the Assert's data as "[part] [part] ...".
    parts = [p.strip() for p in body.replace("] [", "]\x00[").split("\x00")]
    parts = [p[1:-1] if p.startswith("[") and p.endswith("]") else p for p in parts]
    return " ".join(p for p in parts if p)
