#!/usr/bin/env bash
# Kills `moonlight train` with SIGKILL at random moments (inside checkpoint writes too: the run
# checkpoints every step), resumes it each time, and requires the result to equal an uninterrupted
# run: every file of the final checkpoint byte for byte, and metrics.jsonl line for line (one line
# per step, timings aside).
#
# Each kill waits for the run to reach a random step past its checkpoint (its metrics line, which
# is written just before that step's checkpoint), then kills at once or a random 0–60 ms later, so
# the kills land by the run's progress (inside checkpoint writes and inside steps), not by a clock
# that a busy machine or the sanitizer build would skew.
# The random choices come from a fixed seed.
#
#   kill_resume.sh MOONLIGHT RUN_CONFIG CORPUS WORK_DIR
set -euo pipefail
moonlight=$1 config=$2 corpus=$3 work=$4
steps=12 kills_wanted=16
rm -rf "$work"
mkdir -p "$work"
export OMP_NUM_THREADS=2  # bit-exact resumption needs the same thread count
flags=(--data "$corpus" --doc-separator % --steps "$steps" --checkpoint-every 1 --keep-checkpoints 2)

"$moonlight" train --config "$config" --out "$work/reference" "${flags[@]}" >/dev/null 2>&1

run="$work/killed"
lines() { if [ -f "$run/metrics.jsonl" ]; then wc -l <"$run/metrics.jsonl"; else echo 0; fi; }
checkpointed() { if [ -L "$run/latest" ]; then readlink "$run/latest" | sed -E 's/.*step-0*([0-9]+)$/\1/'; else echo 0; fi; }
start() {
  if [ -L "$run/latest" ]; then resume=(--resume); else resume=(--config "$config"); fi
  "$moonlight" train "${resume[@]}" --out "$run" "${flags[@]}" >/dev/null 2>"$work/stderr" &
  pid=$!
}

kills=0 in_checkpoint=0 finished=0
while read -r u_step u_delay; do
  done_steps=$(checkpointed)
  [ "$done_steps" -ge $((steps - 1)) ] && break  # the last step is left to the uninterrupted finish
  target=$((done_steps + 1 + u_step * (steps - 1 - done_steps) / 1000))
  # A run starts by replacing metrics.jsonl (a fresh one empty, a resumed one cut back to its
  # checkpoint: a new inode either way); only then do its lines count.
  old_inode=$(stat -c %i "$run/metrics.jsonl" 2>/dev/null || echo none)
  start
  while kill -0 "$pid" 2>/dev/null && [ "$(stat -c %i "$run/metrics.jsonl" 2>/dev/null || echo none)" = "$old_inode" ]; do sleep 0.005; done
  while kill -0 "$pid" 2>/dev/null && [ "$(lines)" -lt "$target" ]; do sleep 0.005; done
  # Half the kills at once (inside that step's checkpoint write), half 0–60 ms later.
  sleep "$(awk -v u="$u_delay" 'BEGIN { printf "%.3f", u < 500 ? 0 : (u - 500) * 0.12 / 1000 }')"
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
done < <(awk -v n="$kills_wanted" 'BEGIN { srand(14); for (i = 0; i < n; i++) printf "%d %d\n", int(1000 * rand()), int(1000 * rand()) }')
if [ "$finished" -eq 0 ]; then
  start
  wait "$pid" || { cat "$work/stderr"; exit 1; }
fi
echo "$kills kills ($in_checkpoint inside a checkpoint write)"
[ "$kills" -ge 4 ] || { echo "only $kills kills landed before the run finished"; exit 1; }

for f in "$work/reference/latest/"*; do
  cmp "$f" "$run/latest/$(basename "$f")" || { echo "final checkpoint differs: $(basename "$f")"; exit 1; }
done
untimed() { sed -E 's/"(optimizer_s|step_s|tokens_per_s)":[^,}]*//g' "$1"; }
diff <(untimed "$work/reference/metrics.jsonl") <(untimed "$run/metrics.jsonl") || { echo "metrics.jsonl differs"; exit 1; }
[ "$(wc -l <"$run/metrics.jsonl")" -eq "$steps" ]
rm -rf "$work"
