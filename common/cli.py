"""The command-line entry every script shares: tyro parsing, and one-line errors instead of tracebacks."""
from __future__ import annotations

import os
import shlex
import signal
import sys


def _terminate(signum, frame):  # SIGTERM ends a run like Ctrl-C: locks released, a line saying how to resume
    raise KeyboardInterrupt


def run(main, args_type, default=None, description: str | None = None) -> None:
    """Parse the flags of dataclass args_type with tyro (starting from `default` when given) and run
    main; bad input (a missing file, a flag out of range, a NaN loss, a full or read-only disk) ends with
    one line that names the fix instead of a traceback, and Ctrl-C or SIGTERM with one line saying how to
    resume (everything written is complete: files are written atomically, finished tasks are kept)."""
    import tyro

    try:
        args = tyro.cli(args_type, default=default, description=description)
    except BrokenPipeError:  # --help piped into head: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main(args)
    except (FileNotFoundError, ValueError, RuntimeError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing half-written is left; run the same command to resume: python "
              f"{shlex.join(sys.argv)}", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:  # ENOSPC, EROFS, EACCES... while writing
        where = f" ({e.filename})" if e.filename else ""
        raise SystemExit(f"error: {e.strerror or e}{where}; free space or choose a writable location, then run the "
                         f"same command to resume") from None
