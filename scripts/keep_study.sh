#!/usr/bin/env bash
# Copies a sweep's results and every finished run's light files (summary, config, metrics,
# console log) into docs/studies/NAME/, so that the study can be read there and continued
# from there: `python -m alexnet_jax.sweep --sweep FILE --workdir docs/studies/NAME` skips
# the runs kept and starts the others (checkpoints and event files are not kept).
#   bash scripts/keep_study.sh runs/lrn_vs_bn docs/studies/lrn_vs_bn
set -eu
source=${1:?usage: keep_study.sh SWEEP_DIR DEST}; dest=${2:?usage: keep_study.sh SWEEP_DIR DEST}
mkdir -p "$dest"
for run in "$source"/*/; do
  name=$(basename "$run")
  if [ -f "$run/summary.json" ]; then
    mkdir -p "$dest/$name"
    cp "$run"/summary.json "$run"/metrics.jsonl "$dest/$name/"
  elif ! grep -q "^error: Training loss became" "$run/console.log" 2>/dev/null; then
    continue  # unfinished: it starts again; a diverged run is a result, kept below
  fi
  mkdir -p "$dest/$name"
  cp "$run"/config.json "$dest/$name/"  # its config hash: what the sweep checks it by
  grep -v "^[IW][0-9]\{4\} " "$run/console.log" > "$dest/$name/console.log" || true
done
for file in results.md results.csv curves.png bars.png; do
  [ -f "$source/$file" ] && cp "$source/$file" "$dest/" || true
done
echo "kept $(ls -d "$dest"/*/ 2>/dev/null | wc -l) finished or diverged runs in $dest"
