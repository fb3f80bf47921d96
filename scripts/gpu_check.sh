#!/usr/bin/env bash
# GPU check for the device tool (one H100; no internet there; ~8 minutes).
#
# Prepare here, once per checkout (both folders are git-ignored):
#   mkdir -p carry && cp ../shared/data/cifar10-jpg.tar.gz carry/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
# Then run through the device tool with carry=["carry", ".whl"] and command `bash scripts/gpu_check.sh`.
# Dry run on a CPU (small settings): DEVICE=cpu SMALL=1 bash scripts/gpu_check.sh
# Only the KD fast-path A/B (~2 minutes): QUICK=1 bash scripts/gpu_check.sh
#
# Writes under $OUT: speed_512.log, speed_64.log, speed_switches.log, speed_cohort.log, bench.log,
# records.tar.gz (records + speed records), env.txt.
set -euo pipefail
OUT=${OUT:-/tmp/kdbench-gpu-check}
DEVICE=${DEVICE:-cuda}
ARCHIVE=${ARCHIVE:-carry/cifar10-jpg.tar.gz}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# The GPU image has torch, timm, pandas, matplotlib, scikit-learn, tqdm; Hydra travels as wheels.
if [ -d .whl ] && ! $PY -c "import hydra" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# Install kdbench itself (methods/ maps to kdbench.methods), without the network.
$PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$WORK/kd" . >/dev/null
export PYTHONPATH="$WORK/kd${PYTHONPATH:+:$PYTHONPATH}"
# Run from outside the checkout: `python -m` puts the current folder first on sys.path, and the source tree's
# kdbench/ (without methods/ mapped in) would shadow the installed package.
ARCHIVE=$(realpath "$ARCHIVE"); OUT=$(realpath "$OUT")
cd "$WORK"
KD="$PY -m kdbench"

{ date -u; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"; nvidia-smi 2>/dev/null || true; } > "$OUT/env.txt"

if [ -n "${SMALL:-}" ]; then
  SPEED=(speed.methods=[kd,crd] speed.steps=1 speed.warmup=1 speed.repeats=1)
  STEPS=(speed.steps=1 speed.warmup=1 speed.repeats=1)
  BIG=8; SMALLB=4
  BENCH=(data.max_per_class=20 data.max_test_per_class=10 schedule.epochs=1 teacher.schedule.epochs=1)
else
  SPEED=(speed.steps=20 speed.warmup=5 speed.profile=true speed.repeats=1)
  STEPS=(speed.steps=20 speed.warmup=5 speed.repeats=1)
  BIG=512; SMALLB=64
  BENCH=()
fi

if [ -n "${QUICK:-}" ]; then
  # QUICK=1: only the KD A/B at batch 512 (defaults vs each teacher switch) and vanilla/KD beside the
  # reference loop, 1 round each (~2 minutes): for re-measuring a fast-path change.
  $KD -q speed engine.device=$DEVICE speed.batch_size=512 speed.methods=[vanilla,kd] speed.steps=20 speed.warmup=5 \
      speed.repeats=1 paths.results="$WORK/results" 2>&1 | tee "$OUT/speed_512.log"
  for SW in engine.fold_teacher_bn=false engine.teacher_inference_mode=false; do
    $KD -q speed engine.device=$DEVICE speed.batch_size=512 speed.methods=[kd] speed.reference=false "$SW" \
        speed.steps=20 speed.warmup=5 speed.repeats=1 paths.results="$WORK/results" 2>&1 | tee -a "$OUT/speed_switches.log"
  done
  tar czf "$OUT/records.tar.gz" -C "$WORK" results
  echo "gpu_check: done (quick); files in $OUT"
  exit 0
fi

# 1. The speed harness: every method on resnet32x4 -> resnet8x4 at batch 512 and 64, fast path vs reference loop.
$KD -q speed engine.device=$DEVICE speed.batch_size=$BIG "${SPEED[@]}" paths.results="$WORK/results" 2>&1 | tee "$OUT/speed_$BIG.log"
$KD -q speed engine.device=$DEVICE speed.batch_size=$SMALLB speed.methods=[vanilla,kd] speed.steps=10 speed.warmup=3 \
    paths.results="$WORK/results" 2>&1 | tee "$OUT/speed_$SMALLB.log"

# 2. KD at the big batch with each teacher fast path switched off, and with the teacher compiled:
#    one A/B line per switch (the engine defaults are measured in step 1).
for SW in engine.fold_teacher_bn=false engine.teacher_inference_mode=false engine.compile=teacher; do
  $KD -q speed engine.device=$DEVICE speed.batch_size=$BIG speed.methods=[kd] speed.reference=false "$SW" \
      "${STEPS[@]}" paths.results="$WORK/results" 2>&1 | tee -a "$OUT/speed_switches.log"
done

# 2b. Cohort training: 8 CRD-benchmark methods one after another vs one cohort (one teacher forward per batch),
#     at the CRD protocol's batch 64 and at the big batch.
for B in $SMALLB $BIG; do
  $KD -q speed engine.device=$DEVICE speed.cohort=true speed.batch_size=$B "${STEPS[@]}" \
      paths.results="$WORK/results" 2>&1 | tee -a "$OUT/speed_cohort.log"
done

# 3. A short real run on the CIFAR-10 JPEG data: teacher + vanilla + KD, resnet56 -> resnet20.
$KD bench suite=gpu-check data.source.archive="$ARCHIVE" engine.device=$DEVICE engine.progress=false "${BENCH[@]}" \
    paths.results="$WORK/results" paths.work="$WORK/work" 2>&1 | tee "$OUT/bench.log"

tar czf "$OUT/records.tar.gz" -C "$WORK" results
echo "gpu_check: done; files in $OUT"
