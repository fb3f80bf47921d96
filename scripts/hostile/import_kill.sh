#!/usr/bin/env bash
# kill -9 and Ctrl-C at random points of `results import`; after the next read the store holds all or nothing.
cd "$(dirname "$0")/../.."
K=.venv/bin/kdbench
T=${TMPDIR:-/tmp}/kdbench-hostile/imp; rm -rf $T; mkdir -p $T
$K results export $T/all.tar.gz paths.results=results > /dev/null || exit 1
N=$(tar tzf $T/all.tar.gz | grep -c '^records/')
for i in $(seq 1 12); do
  S=$T/s$i; rm -rf $S
  sig=KILL; [ $((i % 3)) = 0 ] && sig=INT
  $K results import $T/all.tar.gz paths.results=$S > $T/o$i.txt 2>&1 &
  pid=$!
  sleep $((RANDOM % 4 + 2)).$((RANDOM % 10))
  pkill -$sig -f "results import $T/all.tar.gz paths.results=$S" ; wait $pid; rc=$?
  before=$(ls $S/runs 2>/dev/null | wc -l)
  $K results validate paths.results=$S > $T/v$i.txt 2>&1
  after=$(ls $S/runs 2>/dev/null | wc -l)
  left=$(ls -a $S 2>/dev/null | grep -c '^\.import')
  echo "probe $i SIG$sig rc=$rc: in runs/ right after: $before, after the next read: $after of $N, import leftovers: $left; said: $(tail -1 $T/o$i.txt | cut -c1-100)"
done
