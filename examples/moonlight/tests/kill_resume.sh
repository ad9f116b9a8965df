#!/usr/bin/env bash
# Kills `moonlight train` with SIGKILL at random moments (inside checkpoint writes too: the run
# checkpoints every step), resumes it each time, and requires the result to equal an uninterrupted
# run: every file of the final checkpoint byte for byte, and metrics.jsonl line for line (one line
# per step, timings aside). The kill times are fractions of the uninterrupted run's duration,
# drawn from a fixed seed, so the test adapts to the machine's and the sanitizer's speed.
#
#   kill_resume.sh MOONLIGHT RUN_CONFIG CORPUS WORK_DIR
set -euo pipefail
moonlight=$1 config=$2 corpus=$3 work=$4
kills_wanted=16
rm -rf "$work"
mkdir -p "$work"
export OMP_NUM_THREADS=2  # bit-exact resumption needs the same thread count
flags=(--data "$corpus" --doc-separator % --steps 8 --checkpoint-every 1 --keep-checkpoints 2)

start=$(date +%s%N)
"$moonlight" train --config "$config" --out "$work/reference" "${flags[@]}" >/dev/null 2>&1
duration=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')

run="$work/killed"
kills=0 in_checkpoint=0 finished=0
for delay in $(awk -v t="$duration" -v n="$kills_wanted" 'BEGIN { srand(14); for (i = 0; i < n; i++) printf "%.3f\n", t * (0.05 + 0.6 * rand()) }'); do
  if [ -L "$run/latest" ]; then resume=(--resume); else resume=(--config "$config"); fi
  "$moonlight" train "${resume[@]}" --out "$run" "${flags[@]}" >/dev/null 2>"$work/stderr" &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  status=0
  wait "$pid" || status=$?
  if [ "$status" -eq 137 ]; then
    kills=$((kills + 1))
    if compgen -G "$run/checkpoints/.step-*.tmp" >/dev/null || [ -e "$run/.latest.tmp" ]; then in_checkpoint=$((in_checkpoint + 1)); fi
  elif [ "$status" -eq 0 ]; then
    finished=1
    break
  else
    echo "train exited with status $status:"; cat "$work/stderr"; exit 1
  fi
done
if [ "$finished" -eq 0 ]; then
  if [ -L "$run/latest" ]; then resume=(--resume); else resume=(--config "$config"); fi
  "$moonlight" train "${resume[@]}" --out "$run" "${flags[@]}" >/dev/null 2>"$work/stderr" || { cat "$work/stderr"; exit 1; }
fi
echo "$kills kills ($in_checkpoint inside a checkpoint write) in a run of ${duration}s"
[ "$kills" -ge 1 ] || { echo "no kill landed before the run finished"; exit 1; }

for f in "$work/reference/latest/"*; do
  cmp "$f" "$run/latest/$(basename "$f")" || { echo "final checkpoint differs: $(basename "$f")"; exit 1; }
done
untimed() { sed -E 's/"(optimizer_s|step_s|tokens_per_s)":[^,}]*//g' "$1"; }
diff <(untimed "$work/reference/metrics.jsonl") <(untimed "$run/metrics.jsonl") || { echo "metrics.jsonl differs"; exit 1; }
[ "$(wc -l < "$run/metrics.jsonl")" -eq 8 ]
rm -rf "$work"
