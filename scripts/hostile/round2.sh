#!/usr/bin/env bash
# Hostile probes, round two: every class of issue 24, through the CLI, against this checkout (after `make install`).
# One line per probe: [id] what: rc=EXIT tb=TRACEBACKS | what the store holds afterwards | the message it gave.
# Usage: scripts/hostile/round2.sh [SECTION ...]  (0 = the shared base store; 1-12 = issue 24's classes; 13 = other
# attacks; default: all). Under the shared CPU lock: flock /tmp/kdbench-cpu.lock bash scripts/hostile/round2.sh 5
# Works under ${TMPDIR:-/tmp}/kdbench-hostile2. Full and read-only disks are simulated with a tmpfs or a read-only
# bind mount in a private mount namespace (unshare -m: needs root or CAP_SYS_ADMIN), since chmod -w binds no root.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD; K=$ROOT/.venv/bin/kdbench; PY=$ROOT/.venv/bin/python
R=${TMPDIR:-/tmp}/kdbench-hostile2; L=$R/lib; mkdir -p $L
E="engine.progress=false schedule.epochs=1 teacher.schedule.epochs=1 schedule.milestones=[1.0] teacher.schedule.milestones=[1.0]"
P() { echo "paths.results=$1/results paths.work=$1/work"; }  # a probe folder's store and work folder
export K PY R E L

# ---------------------------------------------------------------- helpers (python files written on each start)
cat > $L/store.py <<'EOF'
# What a store (and its work folder) holds: records by kind, kept models, run folders, teachers, leftovers.
import json, sys
from pathlib import Path
from kdbench.experiment.schema import validate_record
res, work = Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None
c = f = bad = 0
runs = res / "runs"
for p in (sorted(runs.glob("*.json")) if runs.is_dir() else []):
    try:
        r = json.loads(p.read_text())
    except Exception:
        bad += 1; continue
    if validate_record(r, p.name): bad += 1
    elif r["status"] == "completed": c += 1
    else: f += 1
out = [f"records {c} done/{f} failed/{bad} invalid"]
if not res.exists(): out = ["no store"]
elif not res.is_dir(): out = ["store is a file"]
m = res / "models"
if m.is_dir(): out.append(f"models {len(list(m.glob('*.pt')))}")
dots = sorted(p.name for p in res.iterdir() if p.name.startswith(".") and p.name not in (".store.lock", ".filler")) \
    if res.is_dir() else []
if dots: out.append("store-dotfiles " + ",".join(d[:28] for d in dots))
if work is not None and work.is_dir():
    wr = work / "runs"
    dirs = [p for p in wr.iterdir() if p.is_dir()] if wr.is_dir() else []
    if dirs: out.append("run-folders " + ",".join(p.name.split("__")[0] + "-" + p.name.split("__")[2] + (
        "(ckpt)" if (p / "checkpoint.pt").exists() else "") for p in dirs))
    t = work / "teachers"
    if t.is_dir():
        ent = [p for p in t.iterdir() if p.is_dir()]
        out.append(f"teachers {sum((p / 'teacher.json').exists() for p in ent)}" + "".join(
            f" +{p.name[-12:]}" for p in ent if not (p / "teacher.json").exists()))
tmps = sorted({str(p.name) for d in [res] + ([work] if work else []) if d.is_dir() for p in d.rglob("*.tmp")})
if tmps: out.append("tmp " + ",".join(tmps)[:80])
print("; ".join(out))
EOF
cat > $L/msg.py <<'EOF'
# The message a command gave: its error/interrupt line (and the next one when it ends with ':'), else its last line;
# plus how many warnings named a file as not a valid record.
import sys
lines = [l.rstrip() for l in open(sys.argv[1], errors="replace") if l.strip()]
warn = sum("is not a valid record" in l for l in lines)
pick = ""
for i, l in enumerate(lines):
    if l.startswith(("kdbench: error", "kdbench: interrupted", "usage:")) or "Error:" in l[:60]:
        pick = l + (" " + lines[i + 1].strip() if l.endswith(":") and i + 1 < len(lines) else "")
        break
if not pick and lines:
    pick = lines[-1]
    w = [l for l in lines if " WARNING " in l]
    if w and not warn: pick = "[warning: " + w[0].split(" WARNING ", 1)[1][:90] + "] " + pick
print((f"[{warn} warning(s) naming an invalid record] " if warn else "") + pick[:int(sys.argv[2]) if len(sys.argv) > 2 else 220])
EOF
cat > $L/craft.py <<'EOF'
# Craft records whose free text holds each output format's specials, keeping them valid: the experiment id and run id
# are recomputed from the edited spec (records must agree with themselves); a record that does not validate is named.
import json, sys
from pathlib import Path
from kdbench.experiment.identity import experiment_id, run_id_from
from kdbench.experiment.schema import validate_record
src, dst, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
TAIL = (' <img src=x onerror=alert(1)> <b>bold</b> ![im](http://e.x/i.png) [ln](javascript:alert(1)) '
        '\\[bs\\](javascript:alert(2)) \\[bh\\](http://e.x/bh) !\\[bi\\](http://e.x/bi.png) $x^2$ \\textbf{tx} & % # _ { } ~ ^ | pipe\nnewline')
SHORT = ' <img src=x onerror=a()> \\[bh\\](http://e.x/bh) !\\[bi\\](http://e.x/bi.png) $x^2$ \\textbf{tx} & % # _ { } ~ ^ |\nnl'
PAY = {"dataset": '=HYPERLINK("http://e.x/d")' + SHORT, "hardware": "+cmd" + TAIL,  # dataset: short, it names files
       "note": "@SUM(1+1)" + TAIL, "hp": "-2+3" + TAIL}
dst.mkdir(parents=True, exist_ok=True)
for p in sorted(src.glob("*.json")):
    r = json.loads(p.read_text())
    if r["status"] != "completed":
        continue
    spec = r["experiment"]["spec"]
    if mode == "fields":  # dataset name, hardware, note, a hyper-parameter value: importable (names stay plain)
        spec["data"]["name"] = r["dataset"]["name"] = PAY["dataset"]
        r["environment"]["hardware"], r["note"] = PAY["hardware"], PAY["note"]
        if spec["method"]["name"] == "kd":
            spec["method"]["temperature"] = PAY["hp"]
    elif mode == "plus":  # an importable pair name ([A-Za-z0-9_.+-]) that starts a formula
        spec["pair"]["name"] = r["pair"]["name"] = "+cmd-2+3"
    elif mode == "long":  # a long dataset name (it names the figures' files)
        spec["data"]["name"] = r["dataset"]["name"] = "digits-" + "x" * 250
    else:  # names: pair and method names with specials (no '/': they are in the file name)
        spec["pair"]["name"] = r["pair"]["name"] = '=HYPERLINK("http:__e.x","p")<b>p</b>$p$'
        if spec["method"]["name"] == "kd":
            spec["method"]["name"] = r["method"]["name"] = "+kd<i>m[m](javascript:m)"
    r["experiment"]["id"] = experiment_id(spec)
    r["run_id"] = run_id_from(spec, r["seed"])
    name = r["run_id"] + ".json"
    errs = validate_record(r, name)
    if errs:
        print("CRAFT-INVALID", name, errs[:2])
    (dst / name).write_text(json.dumps(r, indent=1))
EOF
cat > $L/scan.py <<'EOF'
# Is anything from a record live in a leaderboard folder? CSV cells (headers too) that start a formula; Markdown
# rendered by a CommonMark parser (as GitHub does) and the page parsed as HTML: tags/attributes the payload brings;
# LaTeX: the payload's specials unescaped. Figures are PNG (their text is not greppable; they rendered).
import csv, re, sys
from html.parser import HTMLParser
from pathlib import Path
from markdown_it import MarkdownIt
out = Path(sys.argv[1]); live = []
NUM = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?( ?[↑↓%])?")
for f in sorted(out.glob("*.csv")):
    for i, row in enumerate(csv.reader(f.open(newline=""))):
        for cell in row:
            if cell[:1] in ("=", "@", "\t", "\r") or (cell[:1] in ("+", "-") and not NUM.fullmatch(cell)):
                live.append(f"{f.name}:{'header' if i == 0 else 'row'}:{cell[:24]!r}")
class Tags(HTMLParser):  # the page's own <script> and the figures' slugged file names are ours
    def __init__(self):
        super().__init__(); self.bad = []; self.scripts = 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); self.scripts += tag == "script"
        src = a.get("src") or ""
        if tag in ("b", "i") or (tag == "script" and self.scripts > 1) or any(k.startswith("on") for k in a) or \
                (tag == "img" and not re.fullmatch(r"[A-Za-z0-9_.-]+\.png|data:image/png;base64,[A-Za-z0-9+/=]+", src)) or \
                any(v and "javascript:" in v for k, v in a.items() if k in ("href", "src")) or (tag == "a" and "e.x" in (a.get("href") or "")):
            self.bad.append(f"<{tag} {' '.join(f'{k}={v}' for k, v in attrs)[:50]}>")
for name, text in (("README.md", MarkdownIt("commonmark").enable("table").render((out / "README.md").read_text())
                     if (out / "README.md").exists() else ""),
                   ("index.html", (out / "index.html").read_text() if (out / "index.html").exists() else "")):
    t = Tags(); t.feed(text)
    live += [f"{name}:{b}" for b in sorted(set(t.bad))]
for f in sorted(out.glob("*.tex")):
    s = f.read_text()
    for raw in ("\\textbf{tx}", "$x^2$", "& % #", "{ } ~ ^", "$p$"):
        if raw in s:
            live.append(f"{f.name}:{raw!r}")
pngs = len(list(out.glob("*.png")))
print(f"live specials: {len(live)}" + (" -> " + "; ".join(sorted(set(live))[:8]) if live else "") + f"; figures {pngs}")
EOF
cat > $L/torchy.py <<'EOF'
# Checkpoint surgery: strip a run checkpoint's owner; make NaN / inf / huge teacher weights.
import sys, torch
op, src, dst = sys.argv[1:4]
s = torch.load(src, weights_only=True)
if op == "strip-owner":
    s.pop("owner", None)
else:
    k = next(k for k, v in s.items() if torch.is_floating_point(v))
    if op == "nan": s[k].view(-1)[0] = float("nan")
    elif op == "inf": s[k].view(-1)[0] = float("inf")
    elif op == "huge": s = {k: v * 1e30 if torch.is_floating_point(v) else v for k, v in s.items()}
torch.save(s, dst)
EOF

cat > $L/killon.py <<'EOF'
# kill -9 PID the moment a file matching GLOB appears (a tight poll: catches windows of a few milliseconds).
import glob, os, signal, sys, time
pid, pattern, limit = int(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
while time.time() < limit:
    hit = glob.glob(pattern)
    if hit:
        os.kill(pid, signal.SIGKILL); print(os.path.basename(hit[0])); break
    try:
        os.kill(pid, 0)
    except OSError:
        break
EOF

# x CMD...: run it; RC, TB (tracebacks), MSG. say ID TEXT [RESULTS [WORK]]: one line.
x() { "$@" > $R/out.txt 2>&1; RC=$?; TB=$(grep -c '^Traceback' $R/out.txt); MSG=$($PY $L/msg.py $R/out.txt); }
st() { $PY $L/store.py "$@" 2>&1 | tail -1; }
say() { local id=$1 what=$2; shift 2; echo "[$id] $what: rc=$RC tb=$TB | ${1:+$(st "$@") | }$MSG"; }
fresh() { rm -rf $R/$1; cp -a $R/base $R/$1; echo $R/$1; }  # a copy of the base store and work folder
bg() { "$@" > $R/bg.txt 2>&1 & BG=$!; }  # start in the background: BG, output in $R/bg.txt
waitfor() { local i; for i in $(seq 1 ${2:-1200}); do eval "$1" && return 0; kill -0 $BG 2>/dev/null || return 1; sleep 0.05; done; return 1; }
ns() { unshare -m bash -c "$1"; }  # a private mount namespace: its mounts vanish with it
ro() { local d=$1; shift; unshare -m bash -c 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"' "$d" "$@"; }
export -f x st

want() { [ $# -eq 0 ] && return 0; local s; for s in "${SECTIONS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
SECTIONS=("$@"); [ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(0 1 2 3 4 5 6 7 8 9 10 11 12 13)

# ---------------------------------------------------------------- 0. the base store every probe copies
# teacher (1 epoch) + vanilla s0, kd s0 (bench) + kd s1 with its checkpoint kept; a bundle of it; the run ids.
base() {
  [ -f $R/base/ids.sh ] && { . $R/base/ids.sh; return; }
  rm -rf $R/base
  $K -q bench $(P $R/base) $E suite.seeds=[0] > $R/base.txt 2>&1 || { echo "base bench failed"; cat $R/base.txt; exit 1; }
  $K -q run $(P $R/base) $E method=kd seed=1 engine.keep_checkpoint=true >> $R/base.txt 2>&1 || exit 1
  $K status $(P $R/base) $E suite.seeds=[0,1,2,3] 2>/dev/null | awk '$3=="vanilla"||$3=="kd"{print toupper(substr($3,1,1)) substr($4,2) "=" $5}' > $R/base/ids.sh
  . $R/base/ids.sh
  TK=$(ls $R/base/work/teachers | grep -v lock | head -1); echo "TK=$TK" >> $R/base/ids.sh
  echo "# base store $R/base: $(st $R/base/results $R/base/work); V0=$V0 K0=$K0 K1=$K1 K2=$K2 teacher $TK"
}
base

bundle_of() { rm -f $2; $K results export $2 paths.results=$1 > /dev/null 2>&1; }  # a bundle of store $1 at $2

# ---------------------------------------------------------------- 1. another run's checkpoint in a run's folder
if want 1; then
  S=$(fresh c1); mkdir -p $S/work/runs/$K2; cp $S/work/runs/$K1/checkpoint.pt $S/work/runs/$K2/
  x $K run $(P $S) $E method=kd seed=2 resume=true; say 1a "kd s1's checkpoint in kd s2's folder, run seed=2 resume=true" $S/results $S/work
  x $K bench $(P $S) $E suite.seeds=[2] suite.methods=[kd]; say 1b "the same, then bench (suites resume by themselves)" $S/results $S/work
  S=$(fresh c1b); mkdir -p $S/work/runs/$K2
  $PY $L/torchy.py strip-owner $S/work/runs/$K1/checkpoint.pt $S/work/runs/$K2/checkpoint.pt
  x $K run $(P $S) $E method=kd seed=2 resume=true
  same=$($PY -c "import json,glob;a=[json.load(open(f)) for f in glob.glob('$S/results/runs/kd__*s[12]__*.json')];print('kd s2 recorded with kd s1 metrics' if len(a)==2 and a[0]['history']==a[1]['history'] else 'histories differ' if len(a)==2 else 'no s2 record')")
  say 1c "the same checkpoint without its 'owner' key (as before checkpoints named their run): $same" $S/results $S/work
  # a teacher training's checkpoint in another teacher's .partial folder (teacher seeds 1 and 2, killed after epoch 1)
  S=$(fresh c1t); for ts in 1 2; do
    bg $K teacher train $(P $S) $E teacher.seed=$ts teacher.schedule.epochs=4
    waitfor "[ \$(ls $S/work/teachers/*.partial/checkpoint.pt 2>/dev/null | wc -l) -ge $ts ]"; kill -9 $BG; { wait $BG; } 2>/dev/null
    [ $ts = 1 ] && T1=$(ls -d $S/work/teachers/*.partial)
  done
  T2=$(ls -d $S/work/teachers/*.partial | grep -v "^$T1$")
  if [ -n "$T2" ]; then cp $T1/checkpoint.pt $T2/checkpoint.pt
    x $K teacher train $(P $S) $E teacher.seed=2 teacher.schedule.epochs=4; say 1d "teacher seed 1's checkpoint in teacher seed 2's .partial, teacher train seed=2" $S/results $S/work
  else echo "[1d] could not catch two teacher trainings with a checkpoint"; fi
fi

# ---------------------------------------------------------------- 2. invalid files under a run's record name
if want 2; then
  bundle_of $R/base/results $R/b2.tar.gz
  i=0
  for kind in completed list broken empty another; do i=$((i+1))
    S=$(fresh c2); F=$S/results/runs/$V1.json
    case $kind in
      completed) echo '{"status": "completed"}' > $F;; list) echo '[{"status": "completed", "run_id": "x"}]' > $F;;
      broken) echo '{"status": "completed", "run_' > $F;; empty) : > $F;; another) cp $S/results/runs/$K1.json $F;;
    esac
    Q="suite.seeds=[0,1]"
    x $K status $(P $S) $E $Q; state=$(awk -v id=$V1 '$5==id{print $1}' $R/out.txt); say 2$i.status "[$kind] under vanilla s1's name: status says vanilla s1 is '$state'"
    x $K plan $(P $S) $E $Q --gflops 10; say 2$i.plan "[$kind] plan"
    x $K leaderboard --out $S/lb $(P $S); say 2$i.lb "[$kind] leaderboard --out"
    x $K eval $V1 $(P $S); say 2$i.evalbad "[$kind] eval vanilla-s1 (the invalid file's run)"
    x $K eval $K0 $(P $S); say 2$i.evalok "[$kind] eval kd-s0 (a valid run beside it)"
    x $K results export $S/x.tar.gz $(P $S); say 2$i.export "[$kind] results export"
    x $K results import $R/b2.tar.gz $(P $S); say 2$i.import "[$kind] results import (a bundle of the base store)" $S/results
    x $K results validate $(P $S); say 2$i.validate "[$kind] results validate"
    x $K doctor $(P $S); say 2$i.doctor "[$kind] doctor"
    x $K bench $(P $S) $E $Q suite.methods=[vanilla]; say 2$i.bench "[$kind] bench seeds 0,1 vanilla (must train vanilla s1)" $S/results $S/work
  done
  # an invalid file that names a run id, then a bundle holding that run's real record
  A=$(fresh c2a); $K -q run $(P $A) $E method=vanilla seed=1 > /dev/null 2>&1; bundle_of $A/results $R/b2v.tar.gz
  S=$(fresh c2); echo '{"status": "completed", "run_id": "'$V1'"}' > $S/results/runs/$V1.json
  x $K results import $R/b2v.tar.gz $(P $S); say 26.import "[{status, run_id: vanilla s1}] under vanilla s1's name, import a bundle with vanilla s1's real record" $S/results
fi

# ---------------------------------------------------------------- 3. results import killed at random points; a full disk
if want 3; then
  B=$R/all.tar.gz; bundle_of $ROOT/results $B; N=$(tar tzf $B | grep -c '^records/')
  S=$R/c3/repeats; rm -rf $S
  x $K results import $B paths.results=$S paths.work=$S/w; say 3.0 "import the committed store's bundle ($N records; its force=true repeats among them) into an empty store" $S
  # the kills, with a bundle of the committed store less its repeats (so that an import can succeed at all)
  rm -rf $R/c3/norep; mkdir -p $R/c3/norep/runs; cp $(ls -d $ROOT/results/runs/*.json | grep -v '__[0-9]\{8\}T[0-9_]*\.json$') $R/c3/norep/runs/
  B=$R/norep.tar.gz; bundle_of $R/c3/norep $B; N=$(tar tzf $B | grep -c '^records/')
  S=$R/c3/ok; rm -rf $S; x $K results import $B paths.results=$S paths.work=$S/w; say 3.00 "the same less its repeats ($N records), not killed" $S
  for i in 1 2 3 4 5 6 7 8; do
    S=$R/c3/s$i; rm -rf $S; mkdir -p $S; sig=KILL; [ $((i % 3)) = 0 ] && sig=INT; [ $i = 8 ] && sig=TERM
    bg $K results import $B paths.results=$S paths.work=$S/w; sleep $((RANDOM % 3 + 2)).$((RANDOM % 10)); kill -$sig $BG 2>/dev/null; { wait $BG; } 2>/dev/null; krc=$?
    before=$(ls $S/runs 2>/dev/null | wc -l); said=$($PY $L/msg.py $R/bg.txt 120)
    x $K results validate paths.results=$S paths.work=$S/w
    echo "[3.$i] SIG$sig at a random point of import: rc=$krc, in runs/ right after $before, after the next read $(ls $S/runs 2>/dev/null | wc -l) of $N; $(st $S) | said: $said"
  done
  for what in stage journal; do
    S=$R/c3/$what; rm -rf $S; mkdir -p $S
    bg $K results import $B paths.results=$S paths.work=$S/w
    if [ $what = stage ]; then waitfor "ls -d $S/.import-stage-* >/dev/null 2>&1" 4000; else waitfor "[ -e $S/.import-journal.json ]" 4000; fi
    kill -9 $BG 2>/dev/null; { wait $BG; } 2>/dev/null; krc=$?; before=$(ls $S/runs 2>/dev/null | wc -l)
    x $K status paths.results=$S paths.work=$S/w
    echo "[3.$what] kill -9 exactly while the import's $what exists: rc=$krc, runs/ right after $before, after the next command $(ls $S/runs 2>/dev/null | wc -l) of $N; $(st $S) | next said: $MSG"
  done
  # a full disk: a tmpfs with room for about half the bundle's records
  half=$(( $(tar xzf $B -O --wildcards 'records/*' | wc -c) / 2048 ))
  S=$R/c3/full; rm -rf $S; mkdir -p $S
  ns "mount -t tmpfs -o size=${half}k tmpfs $S || exit 9
      x $K results import $B paths.results=$S paths.work=$R/c3/fullw; echo \"[3.full] import into a store with room for half ($half KiB tmpfs): rc=\$RC tb=\$TB | \$(st $S) | \$MSG\"
      mount -o remount,size=256m $S
      x $K results import $B paths.results=$S paths.work=$R/c3/fullw; echo \"[3.full2] the same import once there is room: rc=\$RC tb=\$TB | \$(st $S) | \$MSG\"" \
    || echo "[3.full] no tmpfs could be mounted (unshare -m needs root/CAP_SYS_ADMIN): not probed"
fi

# ---------------------------------------------------------------- 4. an import racing a run of the same run id
if want 4; then
  A=$(fresh c4a); $K -q run $(P $A) $E method=kd seed=2 > /dev/null 2>&1; bundle_of $A/results $R/b4.tar.gz  # kd s2 made elsewhere
  S=$(fresh c4)
  bg $K run $(P $S) $E method=kd seed=2 schedule.epochs=1
  waitfor "[ -e $S/work/runs/$K2/config.yaml ]"
  x $K results import $R/b4.tar.gz $(P $S); imp="rc=$RC $MSG"; wait $BG; runrc=$?
  n=$(ls $S/results/runs/ | grep -c "^$K2"); echo "[4a] import of kd s2 while kd s2 trains here: import $imp | run rc=$runrc | kd s2 records now: $n"
  x $K results import $R/b4.tar.gz $(P $S); say 4b "the same import after the run ended (other content: a conflict)" $S/results
  for i in 1 2 3 4; do
    S=$(fresh c4r); d=$((RANDOM % 9)).$((RANDOM % 10))
    bg $K run $(P $S) $E method=kd seed=2; sleep $d
    x $K results import $R/b4.tar.gz $(P $S); imp="rc=$RC $(echo $MSG | cut -c1-90)"; wait $BG; runrc=$?
    trained=$(grep -c 'record written' $R/bg.txt); n=$(ls $S/results/runs/ | grep -c "^$K2")
    verdict=OK; [ $n != 1 ] && verdict="DEFECT: $n records of kd s2"
    echo "[4c.$i] import ${d}s after the run started: import $imp | run rc=$runrc trained=$trained | kd s2 records: $n ($verdict)"
  done
fi

# ---------------------------------------------------------------- 5. teachers of bad weights, weights outside the entry; eval
if want 5; then
  TW=$R/base/work/teachers/$TK/model.pt
  for op in nan inf huge; do
    $PY $L/torchy.py $op $TW $R/t5-$op.pt
    S=$(fresh c5$op)
    x $K teacher import $R/t5-$op.pt --arch cnn_wide --dataset digits $(P $S); say 5a.$op "teacher import of $op weights" $S/results $S/work
    x $K teacher import $R/t5-$op.pt --arch cnn_wide --dataset digits --no-eval $(P $S); say 5a.$op-noeval "the same with --no-eval" $S/results $S/work
  done
  hk=$(ls -d $R/c5huge/work/teachers/*/ 2>/dev/null | grep -v "/$TK/" | head -1)
  if [ -n "$hk" ]; then hk=$(basename $hk)
    x $K run $(P $R/c5huge) $E method=kd seed=3 teacher.hash=$hk; say 5a.huge-run "run kd from the imported huge-weight teacher $hk" $R/c5huge/results $R/c5huge/work; fi
  S=$(fresh c5x); D=$S/work/teachers/$TK; echo "outside" > $S/work/x
  for v in /dev/zero ../x; do
    cp -a $R/base/work/teachers/$TK/teacher.json $D/teacher.json
    $PY - $D/teacher.json "$v" <<'EOF'
import json, sys; m = json.load(open(sys.argv[1])); m["weights"]["file"] = sys.argv[2]; json.dump(m, open(sys.argv[1], "w"))
EOF
    x $K teacher list $(P $S); say "5b.list[$v]" "teacher.json weights.file=$v, teacher list"
    x $K run $(P $S) $E method=kd seed=3; say "5b.run[$v]" "the same, run kd s3" $S/results $S/work
  done
  cp -a $R/base/work/teachers/$TK/teacher.json $D/teacher.json
  for tgt in /dev/zero $S/work/x.pt; do
    cp $TW $S/work/x.pt; rm -f $D/model.pt; ln -s $tgt $D/model.pt
    x $K run $(P $S) $E method=kd seed=3; say "5c[$tgt]" "model.pt a symlink to $(basename $tgt) (the right weights when x.pt), run kd s3" $S/results $S/work
  done
  rm -f $D/model.pt; cp $TW $D/model.pt
  for edit in nosha nospec nometrics; do
    cp -a $R/base/work/teachers/$TK/teacher.json $D/teacher.json
    $PY - $D/teacher.json $edit <<'EOF'
import json, sys; m = json.load(open(sys.argv[1])); e = sys.argv[2]
if e == "nosha": del m["weights"]["sha256"]
elif e == "nospec": del m["spec"], m["source"]
else: m["metrics"] = []
json.dump(m, open(sys.argv[1], "w"))
EOF
    x $K teacher list $(P $S); say "5d.list[$edit]" "a damaged teacher.json ($edit), teacher list"
    x $K run $(P $S) $E method=kd seed=3; say "5d.run[$edit]" "the same, run kd s3" $S/results $S/work
  done
  S=$(fresh c5n); x $K teacher import $TW --arch cnn_wide --dataset digits --no-eval $(P $S); say 5e "teacher import --no-eval of kdbench's own digits teacher" $S/results $S/work
  S=$(fresh c5e); cp $S/results/models/$K1.pt $S/results/models/$K0.pt
  x $K eval $K0 $(P $S) paths.models=$S/results/models; say 5f "eval kd-s0 whose kept model is kd s1's (copied over it), paths.models given"
  x $K eval $K0 $(P $S) --out $R/c5e.json; say 5g "the same without paths.models: evaluated $(grep -o '"model": "[^"]*' $R/c5e.json 2>/dev/null | cut -c11-)"
  S=$(fresh c5m); rm -rf $S-moved; $K -q run $(P $S) $E method=kd seed=3 > /dev/null 2>&1; mv $S $S-moved
  x $K eval $K3 $(P $S-moved); say 5h "run kd s3 in a store, move the store, eval kd-s3 there (its model is in it)"
fi

# ---------------------------------------------------------------- 6. out-of-range values (beyond round.sh)
if want 6; then
  S=$(fresh c6)
  for bad in "method=crd method.nce_m=1.5" "method=crd method.nce_t=0" "method=crd method.mode=fast" "method=crd method.negatives=none" \
             "method=crd method.feat_dim=1.5" "method=crd method.nce_k=100000" "method=cc method.feat_dim=0" "method=dkd method.warmup=0" \
             "method=fitnet method.stages=3" "method=fitnet method.hint_layer=99" "method=ft method.rate=0" "method=ft method.rate=1.5" \
             "method=ft method.init_lr=0" "method=byot method.alpha=1.5" "method=tf-kd-reg method.correct_prob=1" "method=tf-kd-self method.alpha=-0.1" \
             "method=one method.branches=1" "method=reviewkd method.max_mid_channels=0" "method=ab method.margin=0" "method=ab method.init_epochs=-1" \
             "method=fsp method.init_epochs=-1" "method=dml method.update=both" "method=dml method.peers=[nosuchnet]" "method=dml method.peers=5" \
             "method=takd method.assistants=[nosuchnet]" "method=takd method.assistants=7" "method=kd method.temperature=nan" \
             "method=kd method.temperature=inf" "method=kd method.temperature=1e999" "method=kd method.temperature=true" "method=kd method.nosuchkey=1" \
             "method=pkt method.beta=-1" "method=sp method.beta=-1" "method=nst method.beta=-1" "method=vid method.init_var=0" "method=cs-kd method.lamda=-1" \
             "method=at method.p=abc" "schedule.momentum=2" "schedule.lr=0" "schedule.weight_decay=-1" "schedule.milestones=[2.0]" "data.val_fraction=1" \
             "data.max_per_class=0" "teacher.schedule.lr=-1" "teacher.seed=-1" "teacher.hash=xyz" "protocol.precision=fp16" "seed=2.5" "seed=1e30" \
             "engine.device=tpu" "engine.compile=maybe" "engine.channels_last=2" "engine.optimizer_impl=bogus" "engine.track=[bogus]" \
             "engine.fold_teacher_bn=perhaps" "bench.cohort_max=-1" "speed.repeats=0" "note=[1,2]"; do
    x $K run $(P $S) $E $bad; say "6[$bad]" "run" $S/results
  done
  x $K plan $(P $S) $E suite.methods=[kd] method.temperature=0; say 6.plan "plan suite.methods=[kd] method.temperature=0"
  x $K bench $(P $S) $E suite.methods=[kd] suite.seeds=[3] method.temperature=0; say 6.bench "bench suite.methods=[kd] method.temperature=0" $S/results
  x $K bench $(P $S) $E suite.methods=[kd,crd] suite.seeds=[3] method.nce_k=0; say 6.bench2 "bench suite.methods=[kd,crd] method.nce_k=0 (a key only crd has)" $S/results
  x $K show method kd method.temperature=-1; say 6.show "show method kd method.temperature=-1"
  x $K speed $(P $S) speed.methods=[kd] speed.steps=2 speed.warmup=0 speed.repeats=1 pair=digits/cnn_wide-cnn_small method.temperature=-1; say 6.speed "speed with method.temperature=-1"
fi

# ---------------------------------------------------------------- 7. leaderboard --out into a folder with a foreign manifest
if want 7; then
  S=$R/c7; rm -rf $S; mkdir -p $S
  mk() { rm -rf $S/out; mkdir -p $S/out; echo precious > $S/out/precious.txt; echo "$1" > $S/out/manifest.json; }
  mk '{"files": {"precious.txt": "x"}}'
  x $K leaderboard --out $S/out $(P $R/base); say 7a "a foreign manifest {files: {precious.txt}}: precious.txt $( [ -e $S/out/precious.txt ] && echo kept || echo DELETED)"
  mk '{"version": 3, "options": {"metric": "last", "compare_short": false, "against": null}, "inputs_sha256": "'$(printf 'a%.0s' {1..64})'", "files": {"precious.txt": "'$(printf 'b%.0s' {1..64})'"}}'
  x $K leaderboard --out $S/out $(P $R/base); say 7b "a foreign manifest of exactly our old (version 3) shape: precious.txt $( [ -e $S/out/precious.txt ] && echo kept || echo DELETED)"
  mk '[1, 2]'; x $K leaderboard --out $S/out $(P $R/base); say 7c "manifest.json holds a JSON list"
  rm -rf $S/out; mkdir -p $S/out/manifest.json; x $K leaderboard --out $S/out $(P $R/base); say 7d "manifest.json is a folder"
  rm -rf $S/out; mkdir -p $S/out; ln -s /etc/hostname $S/out/manifest.json; x $K leaderboard --out $S/out $(P $R/base); say 7e "manifest.json a symlink to /etc/hostname"
  mk '{"files": {"precious.txt": "x"}}'; x $K leaderboard --check --out $S/out $(P $R/base); say 7f "--check of a foreign-manifest folder"
  x $K leaderboard --out $R/base/results $(P $R/base); say 7g "--out the results store itself"
  mk '{"name": "My app", "short_name": "app", "icons": [], "start_url": "."}'
  x $K leaderboard --out $S/out $(P $R/base); say 7h "a web-app manifest.json (a dict, no file list) in --out: precious.txt $( [ -e $S/out/precious.txt ] && echo kept || echo DELETED)"
fi

# ---------------------------------------------------------------- 8. read-only and full disks; a diverging teacher
if want 8; then
  echo "# id -u = $(id -u): $( [ $(id -u) = 0 ] && echo 'root: chmod -w does not stop its writes, so read-only = a read-only bind mount (EROFS), full = a small tmpfs' || echo 'not root: chmod -w applies')"
  S=$(fresh c8chmod); chmod -R a-w $S/results
  x $K run $(P $S) $E method=kd seed=2; say 8.chmod "chmod -R a-w results/, run kd s2 (as uid $(id -u))" $S/results $S/work; chmod -R u+w $S/results
  S=$(fresh c8)
  x ro $S/results $K run $(P $S) $E method=kd seed=2; say 8a "read-only store: run kd s2" $S/results $S/work
  x $K run $(P $S) $E method=kd seed=2 resume=true; say 8a2 "writable again: run kd s2 resume=true" $S/results $S/work
  bundle_of $R/base/results $R/b8.tar.gz; rm -f $S/results/runs/$K1.json
  x ro $S/results $K results import $R/b8.tar.gz $(P $S); say 8b "read-only store: results import (1 new record)" $S/results
  x ro $S/results $K results migrate $(P $S); say 8c "read-only store: results migrate"
  for c in "status" "leaderboard --out $R/c8lb" "doctor" "doctor --clean" "results validate"; do
    x ro $S/results $K $c $(P $S) $E; say "8d[$c]" "read-only store: $c"; done
  x ro $S/results $K bench $(P $S) $E suite.seeds=[0]; say 8e "read-only store: bench of a done suite" $S/results
  x ro $S/work $K run $(P $S) $E method=kd seed=3; say 8f "read-only work folder: run kd s3" $S/results $S/work
  x ro $S/work $K teacher train $(P $S) $E teacher.seed=4; say 8g "read-only work folder: teacher train (new)" $S/results $S/work
  x ro $S/work $K status $(P $S) $E; say 8h "read-only work folder: status"
  mkdir -p $R/c8ro; x ro $R/c8ro $K eval $K0 $(P $S) --out $R/c8ro/m.json; say 8i "eval --out into a read-only folder"
  x ro $R/c8ro $K results export $R/c8ro/b.tar.gz $(P $S); say 8j "results export into a read-only folder"
  # full disks (tmpfs filled by a filler file, in a private mount namespace)
  S=$(fresh c8f)
  ns "cp -a $S/results $S/results.src; mount -t tmpfs -o size=8m tmpfs $S/results || exit 9; cp -a $S/results.src/. $S/results/
      dd if=/dev/zero of=$S/results/.filler bs=64k 2>/dev/null
      x $K run $(P $S) $E method=kd seed=2; echo \"[8k] full store: run kd s2: rc=\$RC tb=\$TB | \$(st $S/results $S/work) | \$MSG\"
      rm $S/results/.filler; x $K run $(P $S) $E method=kd seed=2 resume=true; echo \"[8k2] room again: run kd s2 resume=true: rc=\$RC tb=\$TB | \$(st $S/results $S/work) | \$MSG\"
      rm $S/results/runs/$K1.json; dd if=/dev/zero of=$S/results/.filler bs=64k 2>/dev/null; x $K results import $R/b8.tar.gz $(P $S); echo \"[8k3] full store: results import: rc=\$RC tb=\$TB | \$(st $S/results) | \$MSG\""
  S=$(fresh c8w)
  ns "cp -a $S/work $S/work.src; mount -t tmpfs -o size=8m tmpfs $S/work || exit 9; cp -a $S/work.src/. $S/work/; dd if=/dev/zero of=$S/work/.filler bs=64k 2>/dev/null
      x $K run $(P $S) $E method=kd seed=2; echo \"[8l] full work folder: run kd s2: rc=\$RC tb=\$TB | \$(st $S/results $S/work) | \$MSG\"
      x $K teacher train $(P $S) $E teacher.seed=4; echo \"[8l2] full work folder: teacher train (new): rc=\$RC tb=\$TB | \$(st $S/results $S/work) | \$MSG\""
  mkdir -p $R/c8full
  ns "mount -t tmpfs -o size=60k tmpfs $R/c8full || exit 9
      x $K leaderboard --out $R/c8full/lb $(P $R/base); echo \"[8m] leaderboard --out onto a 60 KiB tmpfs (it needs ~160): rc=\$RC tb=\$TB | \$(ls -A $R/c8full/lb 2>/dev/null | wc -l) files | \$MSG\"
      mount -o remount,size=64m $R/c8full; x $K leaderboard --out $R/c8full/lb $(P $R/base); echo \"[8m2] the same with room: rc=\$RC tb=\$TB | \$MSG\"
      x $K leaderboard --check --out $R/c8full/lb $(P $R/base); echo \"[8m3] --check after: rc=\$RC | \$MSG\"
      dd if=/dev/zero of=$R/c8full/.filler bs=64k 2>/dev/null; x $K results export $R/c8full/b.tar.gz $(P $R/base); echo \"[8n] results export onto a full tmpfs: rc=\$RC tb=\$TB | leftovers: \$(ls -A $R/c8full | grep -v '^lb$\|^.filler$' | tr '\n' ' ') | \$MSG\"
      x $K eval $K0 $(P $R/base) --out $R/c8full/m.json; echo \"[8o] eval --out onto a full tmpfs: rc=\$RC tb=\$TB | \$MSG\""
  # a diverging teacher (lr 1e9) in run, bench and teacher train
  S=$(fresh c8d); DV="teacher.schedule.lr=1e9 teacher.seed=7"
  x $K run $(P $S) $E $DV method=kd seed=3; say 8p "diverging teacher: run" $S/results $S/work
  x $K bench $(P $S) $E $DV suite.seeds=[3]; say 8q "diverging teacher: bench" $S/results $S/work
  x $K teacher train $(P $S) $E $DV; say 8r "diverging teacher: teacher train" $S/results $S/work
  x $K bench $(P $S) $E schedule.lr=1e9 suite.seeds=[3]; say 8s "diverging students (lr 1e9): bench" $S/results $S/work
fi

# ---------------------------------------------------------------- 9. SIGTERM of a cohort bench; kill -9 of a first leaderboard build
if want 9; then
  C="suite.seeds=[0] schedule.epochs=20 schedule.milestones=[1.0] bench.cohort=true"
  REF=$(fresh c9ref); rm -rf $REF/results; $K -q bench $(P $REF) $E $C bench.cohort=false > /dev/null 2>&1
  S=$(fresh c9); rm -rf $S/results $S/work/runs/$K1
  bg $K bench $(P $S) $E $C
  waitfor "ls $S/work/runs/*/checkpoint.pt >/dev/null 2>&1" 6000; sleep $((RANDOM % 2)).$((RANDOM % 10)); kill -TERM $BG; { wait $BG; } 2>/dev/null; RC=$?
  echo "[9a] SIGTERM of a cohort bench after its first checkpoint: rc=$RC | $(st $S/results $S/work) | $($PY $L/msg.py $R/bg.txt)"
  x $K bench $(P $S) $E $C
  exact=$($PY - $REF/results/runs $S/results/runs <<'EOF'
import json, sys, glob, os
def h(d): return {os.path.basename(f): [{k: v for k, v in row.items() if k not in ("time_s", "lr", "images_per_s")} for row in json.load(open(f))["history"]] for f in glob.glob(d + "/*.json")}
a, b = h(sys.argv[1]), h(sys.argv[2]); print("histories equal to the uninterrupted solo runs" if a == b else f"DIFFER: {sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b.get(k)]}")
EOF
)
  say 9b "the next bench: $exact" $S/results $S/work
  for i in 1 2 3 4; do
    O=$R/c9lb$i; rm -rf $O; bg $K leaderboard --out $O $(P $R/base); sleep $((RANDOM % 4 + 2)).$((RANDOM % 10)); kill -9 $BG 2>/dev/null; { wait $BG; } 2>/dev/null; krc=$?
    left=$(ls -A $O 2>/dev/null | tr '\n' ' ' | cut -c1-60)
    x $K leaderboard --out $O $(P $R/base); r2="rc=$RC $MSG"; x $K leaderboard --check --out $O $(P $R/base)
    echo "[9c.$i] kill -9 of a first leaderboard --out NEW (rc=$krc), left: [${left}] | next build: $r2 | --check: rc=$RC $MSG"
  done
  for w in manifest index; do O=$R/c9k$w; rm -rf $O; [ $w = index ] && $K leaderboard --out $O $(P $R/base) > /dev/null 2>&1
    bg $K leaderboard --out $O $(P $R/base); hit=$($PY $L/killon.py $BG "$O/.$w*.tmp" 120); { wait $BG; } 2>/dev/null; krc=$?
    left=$(ls -A $O 2>/dev/null | grep '\.tmp$' | tr '\n' ' ')
    x $K leaderboard --out $O $(P $R/base); r2="rc=$RC $MSG"; x $K leaderboard --check --out $O $(P $R/base)
    echo "[9f.$w] kill -9 the moment .$w*.tmp appears in a $( [ $w = index ] && echo built || echo new ) --out (caught: ${hit:-nothing}, rc=$krc), temp files left: [${left}] | next build: $r2 | --check: rc=$RC $MSG"
  done
  O=$R/c9lbt; rm -rf $O; mkdir -p $O; echo '{"format": "kdbench-lea' > $O/.manifest.json.k1ll3d.tmp
  x $K leaderboard --out $O $(P $R/base); say 9d "first build killed while claiming the folder (only .manifest.json.XXXX.tmp in it), next build"
  O=$R/c9lbu; rm -rf $O; $K leaderboard --out $O $(P $R/base) > /dev/null 2>&1; echo junk > $O/.index.html.k1ll3d.tmp
  x $K leaderboard --out $O $(P $R/base); r2="rc=$RC"; x $K leaderboard --check --out $O $(P $R/base)
  say 9e "a rebuild killed mid-write (.index.html.XXXX.tmp left), the next build ($r2), then --check"
fi

# ---------------------------------------------------------------- 10. records that carry each output format's specials
if want 10; then
  C=$R/c10; rm -rf $C; mkdir -p $C/results
  $PY $L/craft.py $R/base/results/runs $C/results/runs fields
  x $K results validate paths.results=$C/results; say 10a "crafted records (dataset/hardware/note/hyper-parameter): validate"
  bundle_of $C/results $R/b10.tar.gz; rm -rf $C/imp
  x $K results import $R/b10.tar.gz paths.results=$C/imp paths.work=$C/w; say 10b "import them into a new store" $C/imp
  x $K leaderboard --out $C/lb paths.results=$C/imp; say 10c "leaderboard of the imported records"
  echo "[10d] outputs of 10c: $($PY $L/scan.py $C/lb)"
  x $K status paths.results=$C/imp paths.work=$C/w; say 10e "status of that store"
  mkdir -p $C/names; $PY $L/craft.py $R/base/results/runs $C/names/runs names
  x $K results validate paths.results=$C/names; say 10f "crafted pair/method names (in file names, so not importable: placed in the store)"
  x $K leaderboard --out $C/lbn paths.results=$C/names; say 10g "leaderboard of them"
  echo "[10h] outputs of 10g: $($PY $L/scan.py $C/lbn)"
  bundle_of $C/names $R/b10n.tar.gz; x $K results import $R/b10n.tar.gz paths.results=$C/impn paths.work=$C/w; say 10i "export+import of the crafted-name store"
  mkdir -p $C/plus; $PY $L/craft.py $R/base/results/runs $C/plus/runs plus; bundle_of $C/plus $R/b10p.tar.gz
  x $K results import $R/b10p.tar.gz paths.results=$C/impp paths.work=$C/w; say 10l "import valid records whose pair name is +cmd-2+3" $C/impp
  x $K leaderboard --out $C/lbp paths.results=$C/impp; say 10m "leaderboard of them"
  echo "[10n] outputs of 10m: $($PY $L/scan.py $C/lbp)"
  mkdir -p $C/long; $PY $L/craft.py $R/base/results/runs $C/long/runs long; bundle_of $C/long $R/b10l.tar.gz
  x $K results import $R/b10l.tar.gz paths.results=$C/impl paths.work=$C/w; say 10j "import valid records whose dataset name is 257 characters" $C/impl
  x $K leaderboard --out $C/lbl paths.results=$C/impl; say 10k "leaderboard of them"
fi

# ---------------------------------------------------------------- 11. kills at random points of run and bench; doctor; exact resume
if want 11; then
  C="suite.seeds=[0] schedule.epochs=20 teacher.schedule.epochs=3 schedule.milestones=[1.0] teacher.schedule.milestones=[1.0] engine.progress=false bench.cohort=false"
  REF=$R/c11ref; rm -rf $REF; $K -q bench $(P $REF) $C > /dev/null 2>&1
  cmp11() { $PY - $REF/results/runs $1/results/runs <<'EOF'
import json, sys, glob, os
def h(d): return {os.path.basename(f): [{k: v for k, v in row.items() if k not in ("time_s", "lr", "images_per_s")} for row in json.load(open(f))["history"]] for f in glob.glob(d + "/*.json")}
a, b = h(sys.argv[1]), h(sys.argv[2]); print("exact: histories equal to the uninterrupted bench" if a == b else f"DIFFER: extra/missing {sorted(set(a) ^ set(b))} unequal {[k[:20] for k in a if k in b and a[k] != b[k]]}")
EOF
  }
  unnamed() {  # leftovers on disk that doctor's last output ($R/out.txt) does not name
    local d=$1 p miss=""
    for p in $(ls -d $d/work/runs/*/ $d/work/teachers/*/ $d/results/.i* 2>/dev/null) $(find $d -name '*.tmp' 2>/dev/null); do
      p=${p%/}; if [ -d $p ] && [ -e $p/teacher.json ]; then continue; fi
      grep -qF "$p" $R/out.txt || miss="$miss $(basename $p)$( [ -d $p ] && echo "[$(ls $p | tr '\n' ',')]")"; done
    echo "${miss:- none}"; }
  S=$R/c11; rm -rf $S
  for at in "work/teachers/*.partial/checkpoint.pt" "work/runs/*/config.yaml" "work/runs/*/checkpoint.pt" "results/runs/*.json" "results/models/.*.tmp" random random; do
    bg $K bench $(P $S) $C
    if [ "$at" = random ]; then sleep $((RANDOM % 10 + 5)).$((RANDOM % 10)); kill -9 $BG 2>/dev/null; hit="(random)"
    else hit=$($PY $L/killon.py $BG "$S/$at" 300); fi; { wait $BG; } 2>/dev/null; krc=$?
    x $K doctor $(P $S); echo "[11a] kill -9 of bench when $at appears (caught ${hit:-nothing}; rc=$krc) | $(st $S/results $S/work) | doctor named $(grep -c '^- ' $R/out.txt); on disk, not named:$(unnamed $S)"
  done
  x $K doctor --clean $(P $S); say 11b "doctor --clean" $S/results $S/work
  x $K bench $(P $S) $C; say 11c "the next bench: $(cmp11 $S)" $S/results $S/work
  x $K doctor $(P $S); say 11d "doctor after the bench finished; not named:$(unnamed $S)"
  for id in $(ls $S/results/runs | sed 's/\.json$//'); do x $K eval $id $(P $S); say 11e "eval ${id%%__*} (a kept model for every record?)"; done
  S=$R/c11r; rm -rf $S; mkdir -p $S/work; cp -a $REF/work/teachers $S/work/
  for i in 1 2 3; do
    bg $K run $(P $S) $C method=kd seed=0 resume=true; sleep $((RANDOM % 8 + 5)).$((RANDOM % 10)); kill -9 $BG 2>/dev/null; { wait $BG; } 2>/dev/null; krc=$?
    x $K doctor $(P $S); echo "[11f.$i] kill -9 of run kd s0 at a random point (rc=$krc) | $(st $S/results $S/work) | doctor named $(grep -c '^- ' $R/out.txt); not named:$(unnamed $S)"
  done
  x $K run $(P $S) $C method=kd seed=0 resume=true; say 11g "run kd s0 resume=true after the kills" $S/results $S/work
  cmp=$($PY - $REF/results/runs $S/results/runs <<'EOF'
import json, sys, glob
a = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/kd__*.json")][0]; b = [json.load(open(f)) for f in glob.glob(sys.argv[2] + "/kd__*.json")]
strip = lambda r: [{k: v for k, v in row.items() if k not in ("time_s", "lr", "images_per_s")} for row in r["history"]]
print("exact" if len(b) == 1 and strip(b[0]) == strip(a) else f"DIFFER ({len(b)} records)")
EOF
)
  x $K doctor $(P $S); say 11h "kd s0 after kills vs the uninterrupted run: $cmp; doctor:" $S/results $S/work
fi

# ---------------------------------------------------------------- 12. --version
if want 12; then
  x $K --version; say 12a "kdbench --version (package metadata says $($PY -c 'from importlib.metadata import version; print(version("kdbench"))'))"
  x $K run --version; say 12b "kdbench run --version"
fi

# ---------------------------------------------------------------- 13. other attacks: concurrent benches, a store that is a file, odd names
if want 13; then
  S=$(fresh c13); rm -rf $S/results
  bg $K bench $(P $S) $E suite.seeds=[0,1]; B1=$BG; cp $R/bg.txt /dev/null
  $K bench $(P $S) $E suite.seeds=[0,1] > $R/bg2.txt 2>&1; rc2=$?; wait $B1; rc1=$?
  dup=$(ls $S/results/runs | sed 's/__[0-9T_]*\.json$//; s/\.json$//' | sort | uniq -d | wc -l)
  echo "[13a] two concurrent benches of one suite: rc=$rc1,$rc2 tracebacks=$(cat $R/bg.txt $R/bg2.txt | grep -c ^Traceback) | $(st $S/results $S/work) | runs with more than one record: $dup"
  S=$R/c13f; rm -rf $S; mkdir -p $S; echo "not a folder" > $S/results
  for c in "status" "results validate" "doctor" "leaderboard --out $S/lb" "results export $S/b.tar.gz" "results import $R/base.tar.gz"; do
    [ "$c" = "results import $R/base.tar.gz" ] && bundle_of $R/base/results $R/base.tar.gz
    x $K $c $(P $S) $E; say "13b[$c]" "results store is a file"; done
  x $K run $(P $S) $E method=vanilla seed=5; say 13b.run "results store is a file: run (trains first?)"
  S=$(fresh c13n)
  cp $S/results/runs/$K0.json "$S/results/runs/${K0}__ü ñ.json"
  x $K results validate $(P $S); say 13c "a repeat of kd s0 named RUNID__ü ñ.json: validate"
  rm -f $R/b13.tar.gz; x $K results export $R/b13.tar.gz $(P $S); say 13d "export it"
  x $K results import $R/b13.tar.gz paths.results=$R/c13n-imp paths.work=$R/c13n-w; say 13e "import that bundle into a new store" $R/c13n-imp
  cp $S/results/runs/$K0.json "$S/results/runs/-rf x.json"
  x $K results validate $(P $S); say 13f "a copy named '-rf x.json': validate"
  x $K doctor $(P $S); say 13g "doctor"
fi
