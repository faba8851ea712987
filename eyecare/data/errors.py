"""The data engine's error: something the user can fix (a bad manifest, taxonomy, prompt file or output
folder). It is a ValueError, so the `eyecare` command prints it on one line instead of a traceback."""


class DataError(ValueError):
    """A manifest, taxonomy, prompt file or output folder the data engine cannot use, with where and why."""
