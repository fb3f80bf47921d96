#!/usr/bin/env bash
# Hostile probes of config errors and the teacher cache (issue 29's kinds), against this checkout: one line per probe.
# Expect: every typo exits 2 with one message and stores nothing; concurrent teacher imports both succeed.
cd "$(dirname "$0")/../.."
K=.venv/bin/kdbench
T=${TMPDIR:-/tmp}/kdbench-hostile/w; rm -rf $T; mkdir -p $T
base="paths.results=$T/results paths.work=$T/work engine.progress=false schedule.epochs=1 teacher.schedule.epochs=1 schedule.milestones=[1.0] teacher.schedule.milestones=[1.0]"
# 1. runtime and method typos: each must exit 2 with one message, and store nothing
for bad in engine.eval_batch_size=0 engine.eval_batch_size=-3 engine.log_every=abc engine.log_every=0 engine.threads=0 engine.threads=two \
           engine.keep_checkpoint=maybe engine.keep_model=2 engine.progress=sometimes engine.track=5 bench.cohort=maybe bench.cohort_max=0 \
           bench.depth=-1 bench.job=nope speed.steps=0 speed.batch_size=abc speed.warmup=-1 resume=maybe force=2 retry_failed=yes-please \
           "method=crd method.nce_k=-5" "method=crd method.feat_dim=0" "method=kd method.temperature=-1" "method=kd method.ce_weight=-0.1" \
           "method=fitnet method.hint_layer=-1" "method=at method.p=0" "method=vid method.eps=0" "method=rkd method.angle_weight=-1" \
           "method=dkd method.beta=-8" "method=one method.rampup=0"; do
  out=$($K run $base $bad 2>&1); rc=$?
  n=$(ls $T/results/runs 2>/dev/null | wc -l)
  tb=$(echo "$out" | grep -c Traceback)
  echo "typo [$bad]: rc=$rc records=$n traceback=$tb :: $(echo "$out" | tail -1 | cut -c1-110)"
done
# 2. the corrected command after a typo runs
$K -q run $base method=vanilla engine.eval_batch_size=0 >/dev/null 2>&1
$K -q run $base method=vanilla > $T/ok.txt 2>&1; echo "corrected command after typo: rc=$? $(grep -c 'retry_failed' $T/ok.txt) mentions of retry_failed"
# 3. three rounds of two concurrent teacher imports of one checkpoint
W=$(ls -d $T/work/teachers/*/ 2>/dev/null | head -1)
if [ -z "$W" ]; then $K -q teacher train $base > /dev/null 2>&1; W=$(ls -d $T/work/teachers/*/ | head -1); fi
for r in 1 2 3; do
  rm -rf $T/imp$r
  ( $K teacher import $W/model.pt --arch cnn_wide --dataset digits paths.work=$T/imp$r > $T/i${r}a.txt 2>&1; echo $? > $T/i${r}a.rc ) &
  ( $K teacher import $W/model.pt --arch cnn_wide --dataset digits paths.work=$T/imp$r > $T/i${r}b.txt 2>&1; echo $? > $T/i${r}b.rc ) &
  wait
  echo "concurrent teacher import round $r: rc=$(cat $T/i${r}a.rc),$(cat $T/i${r}b.rc) entries=$(ls -d $T/imp$r/teachers/*/ | wc -l) errors=$(cat $T/i${r}?.txt | grep -c -i 'error\|Traceback')"
done
# 4. --no-eval import of kdbench's own digits checkpoint
$K teacher import $W/model.pt --arch cnn_wide --dataset digits --no-eval paths.work=$T/noeval > $T/ne.txt 2>&1; echo "no-eval digits import: rc=$? $(tail -1 $T/ne.txt | cut -c1-100)"
