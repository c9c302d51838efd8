#!/usr/bin/env bash
# What issue #3 still needs from a GPU, in phases that each fit one 10-minute device call (results under $OUT).
#
#   here, once:        ../shared/tools/gpu-wheels.sh pytest   (pydantic + pytest wheels into .whl/)
#   on the device:     bash benchmarks/gpu_session.sh PHASE   (carry .whl; the command runs from the repo root)
#
# first-light               issue #18 in ONE call (~8 min): nvidia-smi, the CUDA-only tests, the quickstart for one epoch
#                          with the default runtime policy (and that policy), gpu_step.py resnet34->resnet18 at
#                          batch 128 and 256; everything under $OUT, each part kept even when another fails.
# Phases, in the order worth spending device time on (about 25 minutes in all on an H100):
#   tests                    the CUDA-only tests (device-side step guard, side-stream prefetch) + the compile tests
#   step PAIR BATCH          benchmarks/gpu_step.py for one pair and batch: the issue's hand-written variants and
#                            kdgraph's step, side by side (PAIR: resnet34-resnet18 | vit_small-vit_tiny; ~5-8 min)
#   ddp                      1-GPU DDP overhead: the quickstart for one epoch in one process, then under
#                            torchrun --nproc 1 with runtime.distributed=ddp (images/s of each, from metrics.jsonl)
# Each phase also writes versions.txt. Outside a device machine, DEVICE=cpu runs the same plumbing tiny.
set -euo pipefail
phase=${1:?usage: gpu_session.sh first-light | tests | step PAIR BATCH | ddp}
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null && ! python3 -c "import pydantic, pytest" 2> /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
fi
export PYTHONPATH="$PWD/.site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python3 - > "$OUT/versions.txt" << 'EOF'
import torch, timm, pydantic
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, timm {timm.__version__}, pydantic {pydantic.__version__}, {gpu}")
EOF
cat "$OUT/versions.txt"

case "$phase" in
  tests)
    python3 -m pytest -p no:cacheprovider -rs tests/train/test_guard_device.py tests/train/test_prefetch.py \
      tests/train/test_runtime.py 2>&1 | tee "$OUT/tests.txt"
    ;;
  step)
    pair=${2:?step needs PAIR}; batch=${3:?step needs BATCH}
    if [ "$DEVICE" = cpu ]; then size=(--image-size 32 --steps 1 --warmup 0 --threads 1); else size=(); fi
    python3 benchmarks/gpu_step.py --device "$DEVICE" --pairs "$pair" --batch "$batch" "${size[@]}" \
      --out "$OUT/gpu_step-$pair-$batch.md" 2>&1 | tee "$OUT/gpu_step-$pair-$batch.log"
    ;;
  ddp)
    common=(--quiet --overwrite --set train.epochs=1 --set train.baseline=false --set "runtime.device=$DEVICE")
    if [ "$DEVICE" = cpu ]; then common+=(--set data.source=embedded --set train.max_steps_per_epoch=5); fi
    python3 -m kdgraph train specs/quickstart.yaml "${common[@]}" --set "output=$OUT/one"
    python3 -m kdgraph train specs/quickstart.yaml "${common[@]}" --set "output=$OUT/ddp1" \
      --set runtime.distributed=ddp --nproc 1
    python3 - "$OUT" << 'EOF' | tee "$OUT/ddp.txt"
import json, sys
from pathlib import Path
rate = {run: json.loads((Path(sys.argv[1]) / run / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]
        for run in ("one", "ddp1")}
print(f"one process {rate['one']:.0f} img/s; DDP, 1 process {rate['ddp1']:.0f} img/s; "
      f"time ratio DDP / one {rate['one'] / rate['ddp1']:.3f}")
EOF
    ;;
  first-light)
    # issue #18 in one device call of at most ~8 minutes: run with timeout_s 540, then give the machine back
    (nvidia-smi 2>&1 || echo "no nvidia-smi") | tee "$OUT/nvidia-smi.txt"
    python3 -m pytest -p no:cacheprovider -rs -q tests/train/test_guard_device.py tests/train/test_prefetch.py \
      tests/train/test_runtime.py 2>&1 | tee "$OUT/tests.txt" || true
    quick=(--overwrite --set train.epochs=1 --set train.baseline=false --set "output=$OUT/quickstart")
    if [ "$DEVICE" = cpu ]; then quick+=(--set data.source=embedded --set train.max_steps_per_epoch=5); fi
    python3 -m kdgraph train specs/quickstart.yaml "${quick[@]}" 2>&1 | tee "$OUT/quickstart.log" || true
    grep -m1 "device " "$OUT/quickstart.log" | tee "$OUT/runtime_policy.txt" || true  # e.g. "device cuda, bf16, compiled"
    # the best hand-written variant of issue #18 beside kdgraph's default step (the other variants: phase `step`)
    if [ "$DEVICE" = cpu ]; then size=(--image-size 32 --steps 1 --warmup 0 --threads 1); else size=(); fi
    for batch in 128 256; do
      timeout 170 python3 benchmarks/gpu_step.py --device "$DEVICE" --pairs resnet34-resnet18 --batch "$batch" \
        --variants fx-reduce-overhead-fused,kdgraph "${size[@]}" --out "$OUT/gpu_step-$batch.md" 2>&1 \
        | tee "$OUT/gpu_step-$batch.log" || true
    done
    ;;
  *)
    echo "unknown phase $phase: use first-light, tests, step PAIR BATCH or ddp" >&2
    exit 2
    ;;
esac
