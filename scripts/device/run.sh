#!/usr/bin/env bash
# Run THERE, on the GPU machine, after scripts/device/prepare.sh here:
#   run(command="bash scripts/device/run.sh", carry=[".device"], timeout_s=540)
# The device checks of issues 4 and 6, in order of value, each with its own time limit, results in $OUT:
#   1. the CUDA test of tests/unit/test_model.py (CPU and CUDA predictions agree) and the batcher tests;
#   2. bench/classify.py on CUDA: tf_efficientnet_b4 @380 and dm_nfnet_f3 @320, micro-batcher vs bare model;
#   3. bench/time_to_draft.py with an untrained tf_efficientnet_b4 card on CUDA (the timing does not depend
#      on trained weights).
# STEPS="1 2" runs a subset; DEVICE=cpu rehearses it on a machine without a GPU (python3 = a Python 3.12 that
# holds torch, timm and the other packages of the device image).
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/dcmtk-root && tar -C /tmp/dcmtk-root -xJf .device/dcmtk.tar.xz
export PATH=/tmp/dcmtk-root/dcmtk/bin:/tmp/site/bin:$PATH LD_LIBRARY_PATH=/tmp/dcmtk-root/dcmtk/lib:${LD_LIBRARY_PATH:-}
export DCMDICTPATH=/tmp/dcmtk-root/dcmtk/share/dicom.dic
DEVICE=${DEVICE:-cuda}
# `predraft` where the benches look for it: beside the interpreter, as a venv's console script would be.
launcher="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/predraft"
[ -e "$launcher" ] || { printf '#!/bin/sh\nexec %s -m predraft "$@"\n' "$(command -v python3)" > "$launcher" \
    && chmod +x "$launcher"; } || { echo "cannot write $launcher, which the benches call: run as root" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" | tee -a "$OUT/gpu.txt"

step() { [[ " ${STEPS:-1 2 3} " == *" $1 "* ]]; }
if step 1; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/unit/test_model.py tests/unit/test_batcher.py \
        2>&1 | tee "$OUT/tests.log" | tail -5
fi
if step 2; then
    timeout 240 python3 bench/classify.py --device "$DEVICE" --batch 256 --images 4096 --rounds 3 --study-repeats 20 \
        --out "$OUT/classify.json" 2>&1 | tee "$OUT/classify.log" | tail -30
fi
if step 3; then
    card_dir=/tmp/b4-card
    timeout 60 python3 -m predraft models make-untrained "$card_dir" --architecture tf_efficientnet_b4 \
        --input-size 380 2>&1 | tail -1
    timeout 240 python3 bench/time_to_draft.py --studies 20 --interval 1 --device "$DEVICE" \
        --model "$card_dir/card.json" 2>&1 | tee "$OUT/time_to_draft.log" | tail -25
    cp bench/results/time_to_draft.json "$OUT/" 2>/dev/null
fi
