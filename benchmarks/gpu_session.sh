#!/usr/bin/env bash
# What issue #3 still needs from a GPU, in phases that each fit one 10-minute device call (results under $OUT).
#
#   here, once:        ../shared/tools/gpu-wheels.sh pytest   (pydantic + pytest wheels into .whl/)
#   on the device:     bash benchmarks/gpu_session.sh PHASE   (carry .whl; the command runs from the repo root)
#
# first-light               issue #18 in ONE call (~8 min): nvidia-smi, the CUDA-only tests, the quickstart for one epoch
#                          with the default runtime policy (and that policy), gpu_step.py resnet34->resnet18 at
#                          batch 128 (with profiles) and 256; one archive $OUT/first-light.tgz, each part kept even
#                          when another fails, a summary printed last.
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
export PYTHONPATH="$PWD/.site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - > "$OUT/versions.txt" << 'EOF'
import torch, timm, pydantic
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, timm {timm.__version__}, pydantic {pydantic.__version__}, {gpu}")
EOF
cat "$OUT/versions.txt"
# the CUDA-only tests and those whose runtime `auto` takes the GPU path (compiled, bf16) where there is one
GPU_TESTS=(tests/train/test_cuda.py tests/train/test_guard_device.py tests/train/test_prefetch.py
           tests/train/test_trainer.py tests/test_runtime.py)

case "$phase" in
  tests)
    python3 -m pytest -p no:cacheprovider -rs "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/tests.txt"
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
    # issue #18 in one device call of at most ~8 minutes (run with timeout_s 540, then give the machine back).
    # Everything lands in $W and comes back as ONE archive (the device returns at most 8 files); the summary
    # is printed last, so the call's output tail holds it even when the archive is not fetched.
    W=${FL_WORK:-/tmp/first-light}; rm -rf "$W"; mkdir -p "$W"; cp "$OUT/versions.txt" "$W/"  # not under $OUT
    (nvidia-smi; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE) > "$W/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$W/nvidia-smi.txt"
    # correctness, side by side (neither is a timing): the CUDA-only + runtime tests, the quickstart for one epoch
    # with the default runtime policy (whatever `auto` resolves to)
    workers=(); if python3 -c "import xdist" 2> /dev/null; then workers=(-n 4); fi  # each test compiles: in parallel
    timeout 150 python3 -m pytest -p no:cacheprovider -rs "${workers[@]}" "${GPU_TESTS[@]}" > "$W/tests.txt" 2>&1 &
    tests=$!
    quick=(--overwrite --set train.epochs=1 --set train.baseline=false --set "output=$W/quickstart")
    if [ "$DEVICE" = cpu ]; then quick+=(--set data.source=embedded --set train.max_steps_per_epoch=5); fi
    timeout 150 python3 -m kdgraph train specs/quickstart.yaml "${quick[@]}" > "$W/quickstart.log" 2>&1 &
    quickstart=$!
    wait $tests || echo "tests exit $?" >> "$W/tests.txt"
    wait $quickstart || echo "quickstart exit $?" >> "$W/quickstart.log"
    # timing, alone on the GPU: the issue's best hand-written variant beside kdgraph's default step (batch 128 also
    # eager hooks, the issue's plain baseline, and a profile of each variant's warm steps)
    if [ "$DEVICE" = cpu ]; then size=(--image-size 32 --steps 1 --warmup 0 --threads 1); else size=(--steps 200 --warmup 10); fi
    timeout 150 python3 benchmarks/gpu_step.py --device "$DEVICE" --pairs resnet34-resnet18 --batch 128 \
      --variants eager-hooks,fx-reduce-overhead-fused,kdgraph "${size[@]}" --profile "$W" --out "$W/gpu_step-128.md" \
      > "$W/gpu_step-128.log" 2>&1 || echo "gpu_step 128 exit $?" >> "$W/gpu_step-128.log"
    timeout 120 python3 benchmarks/gpu_step.py --device "$DEVICE" --pairs resnet34-resnet18 --batch 256 \
      --variants fx-reduce-overhead-fused,kdgraph "${size[@]}" --out "$W/gpu_step-256.md" \
      > "$W/gpu_step-256.log" 2>&1 || echo "gpu_step 256 exit $?" >> "$W/gpu_step-256.log"
    tar czf "$OUT/first-light.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$W" .
    echo "== tests"; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|exit" "$W/tests.txt" || tail -n 20 "$W/tests.txt"
    for f in versions.txt quickstart.log; do echo "== $f"; tail -n 25 "$W/$f"; done
    echo "== metrics"; cat "$W"/quickstart/metrics.jsonl 2>/dev/null || true
    for b in 128 256; do echo "== gpu_step $b"; cat "$W/gpu_step-$b.md" 2>/dev/null || tail -n 20 "$W/gpu_step-$b.log"; done
    ;;
  *)
    echo "unknown phase $phase: use first-light, tests, step PAIR BATCH or ddp" >&2
    exit 2
    ;;
esac
