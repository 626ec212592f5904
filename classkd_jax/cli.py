"""What every command-line entry point shares: a user error is one line, never a traceback.

    def main(argv) -> int: ...
    if __name__ == "__main__":
        sys.exit(cli.run(main, prog="python -m classkd_jax.train"))

`run` turns the exceptions that mean "the input is wrong" (a missing path, a
malformed file, a config value out of range, a flag that does not parse) into
`<prog>: error: <message>` on stderr and exit status 2. Anything else is a bug
and keeps its traceback. `CLASSKD_DEBUG=1` re-raises user errors too, for
developers who want the stack. A `log_file` given to `run` (or set later with
`set_log_file`, once the workdir is known) also gets the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["UserError", "USER_ERRORS", "format_error", "run", "set_log_file"]


class UserError(Exception):
    """An error in what the user asked for; its message says what and how to fix it."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UserError, FileNotFoundError, ValueError, KeyError]
    try:  # absl's flag errors: a mistyped --config.key or a value of the wrong type
        from absl import flags

        errors.append(flags.Error)
    except ImportError:  # pragma: no cover - absl is a dependency
        pass
    return tuple(errors)


USER_ERRORS = _user_errors()
_log_file: list[Path] = []


def set_log_file(path: str | os.PathLike | None) -> None:
    """Where `run` also writes the traceback of a failure (the run's log file)."""
    _log_file.clear()
    if path is not None:
        _log_file.append(Path(path))


def format_error(error: BaseException) -> str:
    """The one-line message of an error (KeyError's repr quotes are dropped)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])
    else:
        message = str(error)
    message = " ".join(message.split()) or type(error).__name__
    return message


def _record_traceback(error: BaseException) -> None:
    if not _log_file:
        return
    try:
        with _log_file[0].open("a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(error)))
    except OSError:  # the log file is a convenience; never fail because of it
        pass


def run(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    log_file: str | os.PathLike | None = None,
) -> int:
    """Calls `main(argv)`; returns its exit status, or 2 after a one-line user error."""
    if log_file is not None:
        set_log_file(log_file)
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as error:
        _record_traceback(error)
        if os.environ.get("CLASSKD_DEBUG"):
            raise
        logging.getLogger("classkd_jax").debug("user error", exc_info=error)
        print(f"{prog}: error: {format_error(error)}", file=sys.stderr)
        return 2
    except BaseException as error:  # a bug or an interrupt: keep the traceback
        _record_traceback(error)
        raise
