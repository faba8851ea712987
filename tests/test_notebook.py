"""examples/quickstart.ipynb runs top to bottom (executed with nbclient, as a user would in Jupyter), and what it
prints is right: the tile grids transformers' select_best_resolution picks, the views and image tokens they make,
the answer and timings the same tiny model gives in this process, the shapes of the image tokens and logits."""
import ast
import math
import os
import re

import nbformat
from nbclient import NotebookClient
from PIL import Image
from transformers.image_processing_utils import select_best_resolution

from eyecare.model import EyecareGPT
from eyecare.tiny import make_tiny

IMAGES = ["examples/bench/images/fundus.png", "examples/bench/images/oct.png"]


def run_notebook(cache):
    nb = nbformat.read("examples/quickstart.ipynb", as_version=4)
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "MPLBACKEND", "PYTHONPATH", "EYECARE_MODEL")}
    os.environ["XDG_CACHE_HOME"] = str(cache)  # the kernel inherits it: a fresh tiny model, not the user's
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # what Jupyter uses: figures as PNG
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), saved["PYTHONPATH"]) if p)  # this checkout
    os.environ.pop("EYECARE_MODEL", None)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "examples"}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def result_of(cell):
    return "".join(o["data"]["text/plain"] for o in cell.outputs if o.output_type == "execute_result")


def test_quickstart_notebook_runs_and_prints_the_right_values(tmp_path):
    cells = run_notebook(tmp_path)
    with EyecareGPT.from_pretrained(make_tiny(tmp_path / "mine", "phi3"), progress=False) as model:
        config = model.config
        answer = model.chat("Compare the findings in these two images.", images=IMAGES, max_new_tokens=32)
        tokens, prompt_tokens = len(model.last_output.token_ids), model.last_output.prompt_tokens
        logits_rows = model.prepare("Is there diabetic retinopathy?", images=IMAGES[:1]).shape[0]
    ar, vision = config["adaptive_resolution"], config["vision_config"]
    side, grid = ar["tile_size"], vision["image_size"] // vision["patch_size"]
    pooled = math.ceil(grid / ar["tile_pool"]) ** 2
    grids, views, counts = [], [], []
    for path in IMAGES:
        w, h = Image.open(path).size
        rows, cols = (n // side for n in select_best_resolution((h, w), ar["grid_pinpoints"]))
        grids.append((rows, cols))
        views.append(1 + rows * cols)
        counts.append(grid * grid + rows * cols * pooled)

    assert "using a tiny RANDOM model" in text_of(cells[0])
    assert re.match(r"<EyecareGPT phi3 2 layers x 64, vision 4 layers, from .*tiny-phi3>", result_of(cells[0]))
    printed = text_of(cells[1])
    assert printed.strip() == (f"grids (rows, cols): {grids} | views per image: {views} | image tokens: {counts}")
    assert any("image/png" in o.get("data", {}) for o in cells[1].outputs)  # the views, drawn
    assert text_of(cells[2]) == answer + "\n"
    timings = ast.literal_eval(result_of(cells[2]))
    assert timings["tokens"] == tokens and timings["prompt_tokens"] == prompt_tokens and timings["vision_ms"] > 0
    d_llm, vocab = config["text_config"]["hidden_size"], config["text_config"]["vocab_size"]
    assert text_of(cells[3]).strip() == f"image tokens: ({counts[0]}, {d_llm}) | logits: ({logits_rows}, {vocab})"
