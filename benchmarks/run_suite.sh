#!/usr/bin/env bash
# Run a list of bench.train workloads one after the other on one GPU, each under its own time limit, writing
# every JSON and log into OUT_DIR. Usage: bash benchmarks/run_suite.sh OUT_DIR NAME "ARGS" [NAME "ARGS" ...]
# e.g. bash benchmarks/run_suite.sh /tmp/out eve_1b_pretrain_mb64 "--model eve_1b --workload pretrain --micro-batch 64"
set -u
out=$1; shift
mkdir -p "$out"
limit=${SUITE_RUN_LIMIT_S:-300}
while [ $# -ge 2 ]; do
  name=$1; args=$2; shift 2
  echo "== $name: $args"
  start=$(date +%s)
  # shellcheck disable=SC2086  # ARGS is a word list on purpose
  timeout "$limit" python -m eve_lightning.bench.train $args --out "$out/$name.json" > "$out/$name.log" 2>&1
  echo "   rc=$? in $(( $(date +%s) - start )) s"
  grep -E "^ +(ours|reference|ours_fp8):|ours_fp8:|Error|error" "$out/$name.log" | cut -c1-400 | tail -6
done
