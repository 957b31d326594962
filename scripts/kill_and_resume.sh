#!/usr/bin/env bash
# Kills the default experiment with SIGKILL at a random moment, runs the same command again, and
# prints both ends: the checkpoints present at the kill and the resumed run's summary.
#   bash scripts/kill_and_resume.sh WORKDIR [MIN_S MAX_S]
set -u
workdir=${1:?usage: kill_and_resume.sh WORKDIR [MIN_S MAX_S]}; lo=${2:-30}; hi=${3:-450}
run() { .venv/bin/python -m alexnet_jax.main --config experiments/fashion_mnist.py \
          --workdir "$workdir" --config.progress_bar=False; }
delay=$(python3 -c "import random; print(round(random.uniform($lo, $hi)))")
run > "$workdir.first.log" 2>&1 &
pid=$!
sleep "$delay"
kill -9 "$pid"
echo "killed after ${delay}s at: $(tail -1 "$workdir/metrics.jsonl" | cut -c1-30)"
echo "checkpoints at the kill: $(ls "$workdir/checkpoints/latest" 2>/dev/null | tr '\n' ' ')"
run 2>&1 | grep -E "Resuming|Test top-1"
cat "$workdir/summary.json"
