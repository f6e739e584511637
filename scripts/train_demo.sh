#!/usr/bin/env bash
# Reproduces the bundled demo model (models/packs/hip/) and its evaluation (docs/evaluation/demo/), step by step as
# it was made: phantoms, then four training runs on phantoms, each starting from the last one's weights (1.1.0),
# then a fifth on phantoms and FracAtlas hips together (2.0.0), each evaluated on 500 fresh phantom studies
# from a seed not used in training, and 2.0.0 on FracAtlas hips it never saw. The runs chain: 1 from random
# weights at 128 px, then 2, 3, 4 and 5 at 192 px, each from the backbone of the run before it.
#
#   bash scripts/train_demo.sh                 # on a two-core CPU: about 2 hours
#   DEVICE=cuda JOBS=16 bash scripts/train_demo.sh
#
# Everything goes under var/ (about 6 GB of phantoms); nothing is downloaded. The last step copies nothing:
# compare var/runs/demo-4/card.json and var/evaluation/demo with models/packs/hip/ and docs/evaluation/demo/,
# then copy weights.safetensors and card.json into models/packs/hip/ yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PREDRAFT=${PREDRAFT:-.venv/bin/predraft}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-2}
SHARED_DATA=${SHARED_DATA:-../shared/data}
DATA2="1500 synthetic phantom studies (predraft phantoms --studies 1500 --seed 1) and the hip radiographs of FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; CC BY 4.0), hardware hips labelled by type and side by predraft (models/data/fracatlas_hip_hardware.csv), other hips as native halves; five runs, the last fine-tuning on both (scripts/train_demo.sh). A demo model: not for clinical use."
DATA="1500 synthetic phantom studies (predraft phantoms --studies 1500 --seed 1); no real patient data; four runs, the last three fine-tuning at 192 px (scripts/train_demo.sh)"
common=(--architecture regnetx_002 --batch-size 32 --seed 1 --device "$DEVICE" --workers 1 --synthetic-demo
        --name predraft-demo-phantoms --training-data "$DATA")

[ -f var/phantoms/train/labels.csv ] || "$PREDRAFT" phantoms var/phantoms/train --studies 1500 --seed 1 --jobs "$JOBS"
[ -f var/phantoms/eval/labels.csv ] || "$PREDRAFT" phantoms var/phantoms/eval --studies 500 --seed 2026 --jobs "$JOBS"

# 1. From random weights at 128 px (no ImageNet weights ship, so there is no head-only stage to run first).
"$PREDRAFT" train var/phantoms/train --out var/runs/demo-1 "${common[@]}" --input-size 128 \
    --head-epochs 0 --epochs 20 --lr 4e-3 --version 1.0.0
# 2., 3. and 4. At 192 px, where thin cerclage cables still show: each run starts from the previous run's
# backbone (--init-weights; the head starts afresh, hence one head-only epoch), with a lower peak rate.
# The split (seed 1) is the same in every run, so no validation patient is ever trained on.
"$PREDRAFT" train var/phantoms/train --out var/runs/demo-2 "${common[@]}" --input-size 192 \
    --init-weights var/runs/demo-1/weights.safetensors --head-epochs 1 --epochs 6 --lr 2e-3 --version 1.1.0
"$PREDRAFT" train var/phantoms/train --out var/runs/demo-3 "${common[@]}" --input-size 192 \
    --init-weights var/runs/demo-2/weights.safetensors --head-epochs 1 --epochs 10 --lr 1e-3 --version 1.1.0
"$PREDRAFT" train var/phantoms/train --out var/runs/demo-4 "${common[@]}" --input-size 192 \
    --init-weights var/runs/demo-3/weights.safetensors --head-epochs 1 --epochs 5 --lr 5e-4 --version 1.1.0

"$PREDRAFT" evaluate var/runs/demo-4/card.json var/phantoms/eval --out var/evaluation/demo-1.1 --device "$DEVICE"

# 5. Demo model 2.0: run 4's backbone, fine-tuned on the phantoms and FracAtlas' hips together
# (models/demo_data.py: predraft's labelling of the hardware hips by type and side, every other FracAtlas hip
# as two native halves), so that a real native hip reads as no hardware. FracAtlas' patients join the split.
.venv/bin/python -m predraft.models.demo_data "$SHARED_DATA" var/phantoms/train var/demo2-data
"$PREDRAFT" train var/demo2-data --out var/runs/demo-5 "${common[@]}" --input-size 192 \
    --init-weights var/runs/demo-4/weights.safetensors --head-epochs 1 --epochs 4 --lr 5e-4 --version 2.0.0 \
    --training-data "$DATA2"
"$PREDRAFT" evaluate var/runs/demo-5/card.json var/phantoms/eval --out var/evaluation/demo --device "$DEVICE"
# Real hips it never trained on: FracAtlas' patients of run 5's test split (the gate's images folder, made by
# scripts/train_gate.sh), beside the same figures for run 4.
for run in demo-4 demo-5; do
    "$PREDRAFT" evaluate-real models/data/gate_labels.csv --images var/gate-images --source fracatlas \
        --model-card var/runs/$run/card.json --split var/runs/demo-5/split.csv --split-set test \
        --out var/evaluation/$run-real
done
