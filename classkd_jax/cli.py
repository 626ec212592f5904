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

An error line is at most `MAX_LINE` characters: a longer message (a
tensorstore spec, say) is cut, and the line ends with where the whole of it
is: the log file, or a file in the temporary directory when there is none.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from classkd_jax import distributed

__all__ = ["MAX_LINE", "UserError", "USER_ERRORS", "error_line", "format_error", "run",
           "set_log_file", "log_file"]  # fmt: skip

MAX_LINE = 300


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


def log_file() -> Path | None:
    """The log file set now (`set_log_file`), if any."""
    return _log_file[0] if _log_file else None


def format_error(error: BaseException) -> str:
    """The one-line message of an error (KeyError's repr quotes are dropped)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])
    else:
        message = str(error)
    message = " ".join(message.split()) or type(error).__name__
    return message


def _record_traceback(error: BaseException) -> Path | None:
    """Appends the traceback to the log file; returns it (None: no log file, or unwritable)."""
    if not _log_file:
        return None
    try:
        with _log_file[0].open("a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(error)))
    except OSError:  # the log file is a convenience; never fail because of it
        return None
    return _log_file[0]


def _spill(error: BaseException) -> Path | None:
    """The traceback in a new file of the temporary directory (no log file to hold it)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix="classkd-jax-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return Path(name)


def error_line(prog: str, message: str, where: Path | None, limit: int = MAX_LINE) -> str:
    """`<prog>: error: <message>` in at most `limit` characters, naming `where` the
    whole error is when it had to be cut.

    Tensorstore's spec dumps (`[tensorstore_spec='...']`) go first; then the middle
    of the message, keeping its start (what failed, where) and its end (usually
    how to fix it)."""
    line = f"{prog}: error: {message}"
    if len(line) <= limit:
        return line
    line = re.sub(r"\s*\[tensorstore_spec(\[\d+\])?='.*?'\]", "", line)
    pointer = f" (the whole error: {where})" if where else ""
    room = limit - len(pointer) - len(" ... ")
    if len(line) + len(pointer) <= limit:
        return line + pointer
    # The head ends at the last clause boundary that leaves the end 60 characters.
    cuts = [m.end() for m in re.finditer(r"[;:] ", line[: max(room - 60, 0)])]
    head = line[: cuts[-1] if cuts and cuts[-1] > len(prog) + 20 else max(room - 60, 0)]
    tail = line[len(line) - max(room - len(head), 0) :] if room > len(head) else ""
    return f"{head.rstrip()} ... {tail.lstrip()}{pointer}"


def run(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    log_file: str | os.PathLike | None = None,
) -> int:
    """Calls `main(argv)`; returns its exit status, or 2 after a one-line user error.

    The command starts with `log_file` as its log (None: none, whatever an
    earlier command in the process set), and the log file set during the call
    (the run's, once its workdir is known) is forgotten after it: a later
    command in the same process does not name it."""
    saved = list(_log_file)
    set_log_file(log_file)
    try:
        return _run(main, argv, prog)
    finally:
        _log_file[:] = saved


def _run(main, argv, prog: str) -> int:
    try:
        status = int(main(argv) or 0)
        distributed.shutdown()  # every process got here: leave the job together
        return status
    except USER_ERRORS as error:
        where = _record_traceback(error)
        if os.environ.get("CLASSKD_DEBUG"):
            raise
        logging.getLogger("classkd_jax").debug("user error", exc_info=error)
        message = format_error(error)
        if where is None and len(f"{prog}: error: {message}") > MAX_LINE:
            where = _spill(error)
        print(error_line(prog, message, where), file=sys.stderr)
        return 2
    except BaseException as error:  # a bug or an interrupt: keep the traceback
        _record_traceback(error)
        raise
