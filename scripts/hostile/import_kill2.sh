#!/usr/bin/env bash
# kill -9 exactly while staging (the stage folder exists) and exactly while publishing (the journal exists).
cd "$(dirname "$0")/../.."
K=.venv/bin/kdbench
T=${TMPDIR:-/tmp}/kdbench-hostile/imp2; rm -rf $T; mkdir -p $T
$K results export $T/all.tar.gz paths.results=results > /dev/null || exit 1
for what in stage journal stage journal; do
  S=$T/$what$RANDOM; mkdir -p $S
  $K results import $T/all.tar.gz paths.results=$S > $T/o.txt 2>&1 &
  pid=$!
  for i in $(seq 1 20000); do
    if [ $what = stage ] && ls -d $S/.import-* >/dev/null 2>&1; then kill -9 $pid; break; fi
    if [ $what = journal ] && [ -e $S/.import-journal.json ]; then kill -9 $pid; break; fi
    kill -0 $pid 2>/dev/null || break
  done
  wait $pid 2>/dev/null; rc=$?
  before=$(ls $S/runs 2>/dev/null | wc -l); stage=$(ls -d $S/.import-* 2>/dev/null | wc -l)
  $K status paths.results=$S > /dev/null 2>&1
  after=$(ls $S/runs 2>/dev/null | wc -l); left=$(ls -a $S | grep -c '^\.import')
  echo "kill -9 at $what: rc=$rc, runs/ right after: $before (stage/journal entries: $stage), after the next command: $after of 177, leftovers: $left"
done
