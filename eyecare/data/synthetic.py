"""A small SYNTHETIC manifest for trying the data engine: 18 made-up cases of 9 made-up patients over the
eight modalities, with drawn images, category labels (some written as synonyms, to show the taxonomy
lookup) and invented free-text reports. Nothing here is patient data or clinically validated; the
"patient" names and numbers in the reports are invented, there to show that the report normalizer is
asked to drop identifying details.

The images are the bench sample's cartoons (eyecare.bench.synthetic), shifted and tinted per case so
that no two cases share an image file's content (the duplicate removal compares content).
examples/data/ is what write_example writes; a test checks that the two agree.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..bench.errors import require
from ..bench.synthetic import _image

# (case id, modality, labels, patient, eye, report)
CASES = [
    ("syn-01", "fundus", "DR", "SYN-P01", "OD",
     "SYNTHETIC. Patient John Synthetic, MRN 000001, seen 2024-01-05. Colour fundus photograph of the right eye: "
     "scattered microaneurysms and dot blot haemorrhages with hard exudates temporal to the fovea. Disc pink, "
     "cup to disc ratio 0.3. Impression: moderate non-proliferative diabetic retinopathy."),
    ("syn-02", "fundus", "glaucomatous optic neuropathy", "SYN-P02", "OS",
     "SYNTHETIC. Fundus photograph, left eye. Cup to disc ratio 0.8 with inferior rim thinning and a disc "
     "haemorrhage at 7 o'clock. Retina flat, vessels normal. Impression: glaucomatous optic neuropathy."),
    ("syn-03", "fundus", "normal", "SYN-P03", "OD", ""),
    ("syn-04", "ffa", "RVO", "SYN-P01", "OS",
     "SYNTHETIC. FFA left eye: delayed filling of the superotemporal branch vein, dilated tortuous venules, "
     "capillary non-perfusion in the superotemporal quadrant with late leakage. Impression: branch retinal "
     "vein occlusion."),
    ("syn-05", "ffa", "CSCR", "SYN-P04", "OD",
     "SYNTHETIC. Fluorescein angiography right eye: a single focal leak above the fovea expanding in a smoke "
     "stack pattern in the late phase. Impression: central serous chorioretinopathy."),
    ("syn-06", "icga", "PCV", "SYN-P04", "OD",
     "SYNTHETIC. ICGA right eye: branching vascular network with nodular hyperfluorescent polyps at its "
     "margin, washout in the late phase. Impression: polypoidal choroidal vasculopathy."),
    ("syn-07", "icga", "choroidal neovascularization", "SYN-P05", "OS",
     "SYNTHETIC. ICGA left eye: a late hyperfluorescent plaque beneath the macula. No polyps. Impression: "
     "choroidal neovascularization."),
    ("syn-08", "oct", "CSC", "SYN-P05", "OD",
     "SYNTHETIC. OCT macula right eye, examined by Dr. Example at Synthetic Eye Clinic: dome shaped serous "
     "detachment of the neurosensory retina with subretinal fluid under the fovea, thick choroid, RPE intact. "
     "Impression: central serous chorioretinopathy."),
    ("syn-09", "oct", "FTMH; ERM", "SYN-P06", "OS",
     "SYNTHETIC. OCT left eye: full thickness defect of the foveal retina with cystic edges, and a "
     "hyperreflective membrane on the inner retinal surface. Impression: macular hole with epiretinal membrane."),
    ("syn-10", "oct", "normal OCT", "SYN-P06", "OD",
     "SYNTHETIC. OCT right eye: normal foveal contour, all retinal layers present, no fluid."
     " Impression: normal macula."),
    ("syn-11", "ubm", "primary angle closure", "SYN-P07", "OD",
     "SYNTHETIC. UBM right eye: shallow anterior chamber, peripheral iris in contact with the trabecular "
     "meshwork in all quadrants, ciliary body normal. Impression: primary angle closure."),
    ("syn-12", "ubm", "iridociliary cyst", "SYN-P07", "OS",
     "SYNTHETIC. UBM left eye: a thin walled anechoic cyst behind the iris root at 3 o'clock pushing the "
     "peripheral iris forward. Impression: iridociliary cyst."),
    ("syn-13", "slit_lamp", "cataract", "SYN-P08", "OD",
     "SYNTHETIC. Slit lamp right eye: clear cornea, deep quiet anterior chamber, dense nuclear lens opacity. "
     "Impression: nuclear cataract."),
    ("syn-14", "slit_lamp", "infectious keratitis", "SYN-P02", "OD",
     "SYNTHETIC. Slit lamp right eye: central corneal stromal infiltrate with overlying epithelial defect, "
     "conjunctival injection, small hypopyon. Impression: infectious keratitis."),
    ("syn-15", "fluorescein_staining", "dry eye", "SYN-P08", "OS",
     "SYNTHETIC. Corneal fluorescein staining left eye: diffuse punctate staining of the inferior cornea, "
     "tear break up time 4 seconds. Impression: dry eye disease."),
    ("syn-16", "fluorescein_staining", "dendritic keratitis", "SYN-P09", "OD",
     "SYNTHETIC. Fluorescein staining right eye: a branching dendritic epithelial lesion with terminal bulbs "
     "staining brightly. Impression: herpes simplex epithelial keratitis."),
    ("syn-17", "ct", "Graves orbitopathy", "SYN-P09", "OU",
     "SYNTHETIC. Orbital CT: bilateral enlargement of the extraocular muscle bellies sparing the tendons, "
     "proptosis, no bony lesion. Impression: thyroid eye disease."),
    ("syn-18", "ct", "blowout fracture", "SYN-P03", "OS",
     "SYNTHETIC. Orbital CT: fracture of the left orbital floor with herniation of orbital fat into the "
     "maxillary sinus, inferior rectus in position. Impression: orbital floor blowout fracture."),
]
HEADER = ["id", "image", "modality", "labels", "report", "patient_id", "eye"]


def case_image(index: int, modality: str) -> np.ndarray:
    """The bench cartoon of the modality, shifted and tinted by the case number: a distinct image per case."""
    pixels = np.roll(_image(modality), shift=5 * index, axis=1)
    tint = 1.0 - 0.04 * (index % 5) * np.array([0.0, 1.0, 0.5])
    return np.clip(pixels * tint, 0, 1)


def manifest_text() -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for case_id, modality, labels, patient, eye, report in CASES:
        writer.writerow([case_id, f"images/{case_id}.png", modality, labels, report, patient, eye])
    return buffer.getvalue()


def write_example(out_dir) -> Path:
    """Write images/ and manifest.csv into `out_dir`; return the manifest's path."""
    image_mod = require("matplotlib.image", "matplotlib", "Drawing the synthetic example images")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index, (case_id, modality, *_) in enumerate(CASES):
        pixels = (case_image(index, modality) * 255).round().astype(np.uint8)
        image_mod.imsave(out / "images" / f"{case_id}.png", pixels)
    path = out / "manifest.csv"
    path.write_text(manifest_text(), encoding="utf-8")
    return path
