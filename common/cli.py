"""The command-line entry every script shares: tyro parsing, and one-line errors instead of tracebacks."""
from __future__ import annotations


def run(main, args_type, default=None, description: str | None = None) -> None:
    """Parse the flags of dataclass args_type with tyro (starting from `default` when given) and run
    main; bad input (a missing file, a flag out of range, a NaN loss) ends with one line that names
    the fix instead of a traceback."""
    import tyro

    args = tyro.cli(args_type, default=default, description=description)
    try:
        main(args)
    except (FileNotFoundError, ValueError, RuntimeError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}") from None
