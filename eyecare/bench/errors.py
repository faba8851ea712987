"""Exceptions raised by eyecare.bench.

Every failure a user can fix (a bad dataset line, a missing image, an unwritable output path, a
model that cannot be loaded, a missing optional library) is a BenchError with a message that says
what is wrong and where, so the CLI can print it on one line instead of a traceback.
"""


class BenchError(Exception):
    """Base class for errors the user can act on."""


class DatasetError(BenchError):
    """The dataset file is malformed or refers to images that do not exist."""


class OutputError(BenchError):
    """The output path cannot be written, or holds predictions that do not match this run."""


class ModelLoadError(BenchError):
    """No model was given, or the one given cannot be loaded."""


class MissingDependency(BenchError):
    """An optional library of the `bench` extra is not installed."""


def require(module: str, package: str, purpose: str):
    """Import an optional library, or raise MissingDependency naming the extra to install.

    The metric and plotting libraries are imported lazily so that `import eyecare.bench` (and
    the runner, which needs none of them) works on a core install.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs the '{package}' package: pip install 'eyecare[bench]' ({exc})"
        ) from None
