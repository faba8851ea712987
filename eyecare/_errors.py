"""Which exceptions the command line reports as one line (the user's input or machine is at fault)
rather than as a traceback (a bug)."""


def user_facing_errors() -> tuple:
    errors = [OSError, ValueError, MemoryError]
    try:
        from ._core import EyecareError

        errors.append(EyecareError)
    except ImportError:
        pass
    try:
        from .bench.errors import BenchError

        errors.append(BenchError)
    except ImportError:
        pass
    return tuple(errors)
