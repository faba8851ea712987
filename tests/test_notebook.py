"""examples/quickstart.ipynb runs top to bottom (executed with nbclient, as a user would in Jupyter)."""
import os

import nbformat
from nbclient import NotebookClient


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read("examples/quickstart.ipynb", as_version=4)
    os.environ["XDG_CACHE_HOME"] = str(tmp_path)  # the kernel inherits it: a fresh tiny model, not the user's
    os.environ["MPLBACKEND"] = "Agg"
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), saved_path) if p)  # this checkout's eyecare
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "examples"}}).execute()
    finally:
        del os.environ["XDG_CACHE_HOME"]
        if saved_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved_path
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "grids (rows, cols)" in outputs and "image tokens" in outputs
