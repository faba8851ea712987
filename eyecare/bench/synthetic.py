"""A small SYNTHETIC sample set: drawn images and invented questions for every task and modality.

Nothing here is patient data or clinically validated. The images are cartoons drawn with NumPy
(a fundus with vessels and exudates, OCT layers over a fluid pocket, ...) and the questions and
reports were written for this sample. It exists so `eyecare bench run` can show the whole flow
in a minute without downloading a dataset; scores on it say nothing about a model.

For each of the eight modalities it writes one yes/no question, one multiple-choice question, one
open question and one report request: 32 records in our JSONL schema (synthetic_sample.jsonl),
and the same cases as LLaVA conversations (synthetic_llava.json) to show that format. The output
is deterministic: the copy under examples/bench/ is what write_sample_set produces.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import require

SIZE = 128

# modality: (yes/no question, answer), (multiple-choice question, options, answer letter),
#           (open question, answer), report
CASES = {
    "fundus": (
        ("Are there hard exudates in this fundus photograph?", "Yes"),
        ("What is the most likely diagnosis?",
         ["Primary open angle glaucoma", "Non-proliferative diabetic retinopathy", "Retinal detachment",
          "Normal fundus"], "B"),
        ("What lesions are visible around the macula?",
         "Scattered dot blot hemorrhages and hard exudates are visible around the macula."),
        "Color fundus photograph of the right eye. The optic disc is pink with clear margins and a cup to disc "
        "ratio of about 0.3. Multiple microaneurysms, dot blot hemorrhages and hard exudates are scattered at the "
        "posterior pole around the macula. No neovascularization is seen. Impression: non-proliferative diabetic "
        "retinopathy.",
    ),
    "ffa": (
        ("Is the retinal perfusion normal in all quadrants on this angiogram?", "No"),
        ("Which diagnosis best explains these angiographic findings?",
         ["Central serous chorioretinopathy", "Retinitis pigmentosa", "Branch retinal vein occlusion",
          "Choroidal melanoma"], "C"),
        ("What does the superotemporal quadrant show in the late phase?",
         "The superotemporal quadrant shows capillary nonperfusion with leakage from dilated tortuous veins."),
        "Fundus fluorescein angiography of the left eye. Delayed filling of the superotemporal branch vein with "
        "dilated tortuous venules. A large area of capillary nonperfusion is present in the superotemporal "
        "quadrant, with late hyperfluorescent leakage along the vessel wall. Impression: branch retinal vein "
        "occlusion with retinal ischemia.",
    ),
    "icga": (
        ("Are there focal hyperfluorescent polyps on this ICGA image?", "Yes"),
        ("Which diagnosis do the indocyanine green angiography findings suggest?",
         ["Polypoidal choroidal vasculopathy", "Optic neuritis", "Macular hole", "Retinoblastoma"], "A"),
        ("What is seen beneath the macula?",
         "Several nodular hyperfluorescent polyps with a branching vascular network are seen beneath the macula."),
        "Indocyanine green angiography of the right eye. Early phase shows a branching vascular network in the "
        "macula terminating in several nodular hyperfluorescent polyps. Late phase shows washout of the polyps. "
        "Impression: polypoidal choroidal vasculopathy.",
    ),
    "oct": (
        ("Is there subretinal fluid under the fovea?", "Yes"),
        ("What is the most likely diagnosis from this OCT scan?",
         ["Full thickness macular hole", "Epiretinal membrane", "Age related macular degeneration with drusen",
          "Central serous chorioretinopathy"], "D"),
        ("Describe the fluid seen on this optical coherence tomography scan.",
         "A dome shaped pocket of subretinal fluid elevates the neurosensory retina under the fovea."),
        "Optical coherence tomography of the macula. A dome shaped serous detachment of the neurosensory retina "
        "with subretinal fluid is present under the fovea. The retinal pigment epithelium is intact and there is "
        "no intraretinal fluid. The choroid is thickened. Impression: central serous chorioretinopathy.",
    ),
    "ubm": (
        ("Is the anterior chamber angle open on this UBM image?", "No"),
        ("Which finding does the ultrasound biomicroscopy show?",
         ["Ciliary body detachment", "Angle closure with iris apposition", "Iris cyst", "Normal open angle"], "B"),
        ("What is the configuration of the peripheral iris?",
         "The peripheral iris bows forward and touches the trabecular meshwork, closing the angle."),
        "Ultrasound biomicroscopy of the anterior segment. The anterior chamber is shallow. The peripheral iris "
        "is in apposition to the trabecular meshwork and the angle is closed. The ciliary body is normal with no "
        "cyst. Impression: primary angle closure.",
    ),
    "slit_lamp": (
        ("Is the lens clear on this slit lamp photograph?", "No"),
        ("What is the most likely diagnosis?",
         ["Keratoconus", "Anterior uveitis", "Pterygium", "Age related cataract"], "D"),
        ("Which structure shows opacity?",
         "The crystalline lens shows a dense nuclear opacity with cortical opacities."),
        "Slit lamp examination of the left eye. The conjunctiva is quiet and the cornea is clear. The anterior "
        "chamber is deep and quiet. The lens shows dense nuclear sclerosis with cortical opacities. Impression: "
        "age related cataract.",
    ),
    "fluorescein_staining": (
        ("Does the cornea show positive fluorescein staining?", "Yes"),
        ("Which lesion does the staining pattern indicate?",
         ["Dendritic ulcer", "Corneal arcus", "Pinguecula", "Band keratopathy"], "A"),
        ("What is the shape of the stained area?",
         "A branching dendritic epithelial defect with terminal bulbs stains with fluorescein."),
        "Corneal fluorescein staining under cobalt blue light. A branching dendritic epithelial defect with "
        "terminal bulbs stains in the central cornea. There is no stromal infiltrate and no hypopyon. "
        "Impression: herpes simplex keratitis with a dendritic ulcer.",
    ),
    "ct": (
        ("Are the extraocular muscles normal in size on this CT scan?", "No"),
        ("Which diagnosis is most consistent with this orbital CT?",
         ["Orbital floor fracture", "Thyroid eye disease", "Retinoblastoma", "Optic nerve glioma"], "B"),
        ("What happens to the globes on this axial computed tomography image?",
         "Both globes show proptosis caused by enlarged extraocular muscles."),
        "Axial computed tomography of the orbits. Bilateral enlargement of the medial and inferior rectus "
        "muscles with sparing of the tendons. Both globes show proptosis. The optic nerves are normal and there "
        "is no orbital mass or fracture. Impression: thyroid eye disease.",
    ),
}


def _grid():
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1) * 2 - 1
    return x, y


def _disc(x, y, cx, cy, r, soft=0.02):
    """1 inside a circle, 0 outside, with a soft edge."""
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return np.clip((r - d) / soft + 0.5, 0, 1)


def _vessels(x, y, rng, n=6):
    """Curved lines fanning out from an optic disc on the left, the pattern of retinal vessels."""
    out = np.zeros_like(x)
    for k in range(n):
        angle = -1.2 + 2.4 * k / (n - 1)
        bend = rng.uniform(-0.4, 0.4)
        t = np.linspace(0, 1.6, 200)
        px = -0.45 + t * np.cos(angle) + bend * t ** 2
        py = 0.0 + t * np.sin(angle) * 0.8
        for qx, qy in zip(px[::4], py[::4]):
            out = np.maximum(out, _disc(x, y, qx, qy, 0.025, 0.02))
    return out


def _fundus(rng, gray=False, dark=False):
    x, y = _grid()
    field = _disc(x, y, 0, 0, 0.95)
    base = np.stack([0.85 - 0.3 * (x ** 2 + y ** 2), 0.45 - 0.15 * (x ** 2 + y ** 2), 0.2 + 0 * x], -1)
    vessels = _vessels(x, y, rng)
    optic = _disc(x, y, -0.45, 0.0, 0.13)
    if gray:
        level = (0.15 if dark else 0.3) + 0.6 * vessels + 0.5 * optic
        img = np.repeat(level[..., None], 3, -1)
    else:
        img = base * (1 - 0.5 * vessels[..., None]) + optic[..., None] * np.array([0.5, 0.45, 0.3])
    return img, field, x, y


def _image(modality: str) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, modality)))
    if modality in ("fundus", "ffa", "icga"):
        img, field, x, y = _fundus(rng, gray=modality != "fundus", dark=modality == "icga")
        for _ in range(12):
            cx, cy = rng.uniform(0.0, 0.5), rng.uniform(-0.4, 0.4)
            spot = _disc(x, y, cx, cy, rng.uniform(0.02, 0.04))[..., None]
            if modality == "fundus":
                color = np.array([0.95, 0.9, 0.4]) if rng.random() < 0.5 else np.array([0.5, 0.05, 0.05])
            elif modality == "ffa":
                color = np.array([1.0, 1.0, 1.0])
            else:
                color = np.array([0.95, 0.95, 0.95]) if rng.random() < 0.4 else np.array([0.2, 0.2, 0.2])
            img = img * (1 - spot) + spot * color
        if modality == "ffa":  # a dark nonperfused quadrant
            img *= 1 - 0.6 * (((x > 0.1) & (y < -0.1))[..., None])
        return np.clip(img * field[..., None], 0, 1)
    x, y = _grid()
    if modality == "oct":
        depth = y + 0.15 * np.exp(-(x / 0.5) ** 2) - 0.1 * np.exp(-(x / 0.12) ** 2)
        bands = sum(a * np.exp(-((depth - c) / w) ** 2) for a, c, w in
                    [(0.9, -0.2, 0.03), (0.4, -0.1, 0.05), (0.6, 0.05, 0.03), (1.0, 0.2, 0.04), (0.5, 0.35, 0.1)])
        fluid = _disc(x / 1.6, y, 0, 0.12, 0.12)
        level = bands * (1 - fluid) + 0.05 * rng.random(x.shape)
        return np.clip(np.repeat(level[..., None], 3, -1), 0, 1)
    if modality == "ubm":
        r, theta = np.sqrt(x ** 2 + (y + 1) ** 2), np.arctan2(x, y + 1)
        fan = (np.abs(theta) < 0.6) & (r < 1.9)
        cornea = np.exp(-((r - 1.6) / 0.03) ** 2)
        iris = np.exp(-((y - 0.25 + 0.2 * x) / 0.05) ** 2) * (x < 0.2)
        level = fan * (0.08 + 0.8 * cornea + 0.7 * iris + 0.1 * rng.random(x.shape))
        return np.clip(np.repeat(level[..., None], 3, -1), 0, 1)
    if modality == "slit_lamp":
        img = np.zeros(x.shape + (3,)) + np.array([0.15, 0.08, 0.05])
        img += _disc(x, y, 0, 0, 0.6)[..., None] * np.array([0.25, 0.2, 0.1])
        img += _disc(x, y, 0, 0, 0.3)[..., None] * np.array([0.55, 0.55, 0.45])  # cloudy lens
        img += (np.exp(-((x - 0.2 * y + 0.1) / 0.03) ** 2) * (np.abs(y) < 0.8))[..., None] * 0.6  # slit beam
        return np.clip(img, 0, 1)
    if modality == "fluorescein_staining":
        img = np.zeros(x.shape + (3,)) + np.array([0.02, 0.05, 0.3])
        img += _disc(x, y, 0, 0, 0.85)[..., None] * np.array([0.0, 0.05, 0.25])
        branch = np.zeros_like(x)
        for k, (ax, ay) in enumerate([(0.5, 0.1), (-0.4, 0.3), (0.1, -0.5), (0.35, 0.45)]):
            for t in np.linspace(0, 1, 25):
                branch = np.maximum(branch, _disc(x, y, t * ax, t * ay, 0.03))
            branch = np.maximum(branch, _disc(x, y, ax, ay, 0.06))  # terminal bulbs
        img += branch[..., None] * np.array([0.3, 0.9, 0.1])
        return np.clip(img, 0, 1)
    if modality == "ct":
        head = _disc(x / 0.9, y, 0, 0.15, 0.95)
        level = 0.05 + 0.35 * head + 0.5 * (_disc(x / 0.9, y, 0, 0.15, 0.95) - _disc(x / 0.9, y, 0, 0.15, 0.88))
        for side in (-1, 1):
            level += 0.25 * _disc(x, y, side * 0.38, -0.45, 0.17)           # globes, pushed forward
            level += 0.2 * _disc(x / 0.4, y, side * 0.38 / 0.4, -0.15, 0.2)  # thick muscles
        return np.clip(np.repeat((level + 0.03 * rng.random(x.shape))[..., None], 3, -1), 0, 1)
    raise ValueError(f"no synthetic image for modality {modality!r}")


def sample_records() -> list:
    """The sample set's records in our JSONL schema, with image paths relative to the set's folder."""
    records = []
    for modality, (yes_no, choice, open_qa, report) in CASES.items():
        image = [f"images/{modality}.png"]
        common = {"images": image, "modality": modality, "source": "synthetic"}
        records.append({"id": f"synthetic-{modality}-yesno", "task": "closed", "question": yes_no[0],
                        "answer": yes_no[1], **common})
        records.append({"id": f"synthetic-{modality}-choice", "task": "closed", "question": choice[0],
                        "options": choice[1], "answer": choice[2], **common})
        records.append({"id": f"synthetic-{modality}-open", "task": "open", "question": open_qa[0],
                        "answer": open_qa[1], **common})
        records.append({"id": f"synthetic-{modality}-report", "task": "report",
                        "question": f"Write the examination report for this {modality.replace('_', ' ')} image.",
                        "answer": report, **common})
    return records


def llava_entries() -> list:
    """The same cases as LLaVA conversations: one multi-turn entry per modality, no task or modality keys."""
    entries = []
    for modality, (yes_no, choice, open_qa, report) in CASES.items():
        options = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(choice[1]))
        entries.append({
            "id": f"synthetic-llava-{modality}",
            "image": f"images/{modality}.png",
            "conversations": [
                {"from": "human", "value": f"<image>\n{yes_no[0]}"},
                {"from": "gpt", "value": yes_no[1]},
                {"from": "human", "value": f"{choice[0]}\n{options}"},
                {"from": "gpt", "value": choice[2]},
                {"from": "human", "value": open_qa[0]},
                {"from": "gpt", "value": open_qa[1]},
            ],
        })
    return entries


def write_sample_set(out_dir) -> Path:
    """Write images/, synthetic_sample.jsonl and synthetic_llava.json into `out_dir`; return the JSONL path."""
    image_mod = require("matplotlib.image", "matplotlib", "Drawing the synthetic sample images")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for modality in CASES:
        pixels = (np.clip(_image(modality), 0, 1) * 255).round().astype(np.uint8)
        image_mod.imsave(out / "images" / f"{modality}.png", pixels)
    jsonl = out / "synthetic_sample.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample_records()), encoding="utf-8")
    (out / "synthetic_llava.json").write_text(json.dumps(llava_entries(), indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    return jsonl
