"""The bundled shoulder pack's model, as it was made (README, "The shoulder pack"):

    .venv/bin/python -m predraft.models.shoulder_data ../shared/data var/shoulder
    mkdir -p var/runs/gate-1.2.0    # the gate the pack started from (1.0.0-1.2.0; since 1.3.0 not in models/gate/)
    git show f29aac5:models/gate/weights.safetensors > var/runs/gate-1.2.0/weights.safetensors
    .venv/bin/python scripts/shoulder_cv.py var/shoulder/development var/cv/shoulder --folds 10 \
        --init-weights var/runs/gate-1.2.0/weights.safetensors --input-size 160 --head-epochs 1 --epochs 30 --flip
    .venv/bin/python scripts/shoulder_cv.py var/shoulder/development var/cv/shoulder --thresholds-only 0.95
    .venv/bin/python scripts/train_shoulder.py          # var/runs/shoulder-final
    # then copy its card.json and weights.safetensors into models/packs/shoulder/, with the card's
    # class_thresholds from var/cv/shoulder/thresholds.json, and evaluate it once on the held-out part:
    .venv/bin/predraft evaluate models/packs/shoulder/card.json var/shoulder/holdout --out var/eval/shoulder-holdout
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from predraft.models.card import sha256_of
from predraft.models.pack import read_pack
from predraft.models.training import TrainingConfig, train

#: The backbone the bundled shoulder model started from: gate 1.2.0's (the weights of gate 1.0.0 to 1.2.0), as the
#: docstring's ``git show`` writes it; models/gate/ holds gate 1.3.0 since 2026-12-07.
GATE_WEIGHTS = Path("var/runs/gate-1.2.0/weights.safetensors")
GATE_WEIGHTS_SHA256 = "aa6f333632e0ab8b3342729dffab86a17c14f7ce4e6685b565418ca9a9ab3362"
pack = read_pack(Path("models/packs/shoulder"))
training_data = (
    "382 development images of the shoulder-implant set of Urban et al. (Computational and Structural Biotechnology "
    "Journal 18, 967-972, 2020; UCI 'Shoulder Implant X-Ray Manufacturer Classification'; 20 % of each manufacturer "
    "held out first: models/data/shoulder_implants_holdout.csv) and 277 FracAtlas shoulders without hardware "
    "(Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0) as 'none' (a fifth of FracAtlas' runs held out), "
    "framed by the implant crop (models/framing.py); backbone from the body-part gate; "
    "python -m predraft.models.shoulder_data ../shared/data var/shoulder, then 1 + 30 epochs at 160 px, mirrored, "
    "90/10 split (scripts/train_shoulder.py). A demo model: not for clinical use."
)
config = TrainingConfig(
    architecture="regnetx_002",
    input_size=160,
    head_epochs=1,
    epochs=30,
    lr=5e-4,
    batch_size=32,
    seed=0,
    fractions=(0.9, 0.1, 0.0),
    flip=True,
    init_weights=GATE_WEIGHTS.resolve(),
    name="predraft-shoulder-demo",
    version="0.1.0",
    training_data=training_data,
    classes=pack.class_names,
    framing=pack.framing,
)
if __name__ == "__main__":
    if not GATE_WEIGHTS.is_file() or sha256_of(GATE_WEIGHTS) != GATE_WEIGHTS_SHA256:
        sys.exit(f"{GATE_WEIGHTS} is not gate 1.2.0's weights: write it with the docstring's git show line")
    start = time.monotonic()
    print(train(Path("var/shoulder/development"), Path("var/runs/shoulder-final"), config, workers=0))
    print(f"{(time.monotonic() - start) / 60:.1f} min")
