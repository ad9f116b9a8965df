#!/usr/bin/env bash
# `moonlight train` on two MPI ranks given different arguments, for the CLI tests in
# CMakeLists.txt beside it. With EXPECTED, it passes when the job fails fast and says why: the
# launcher exits non-zero (so some rank did, and the others were ended), a line matches EXPECTED
# (an extended regular expression), and no rank finished training. With EXPECTED empty, it
# passes when the job trains to the end.
#
#   train_ranks.sh 'MPIEXEC -np 2 [FLAGS]' MOONLIGHT WORKDIR EXPECTED 'RANK-0 ARGS' 'RANK-1 ARGS' [SETUP]
#
# WORKDIR is emptied and is the ranks' working directory. The ARGS strings follow `moonlight
# train` as shell words (quote paths). SETUP, a shell command, runs there first; it can call
# "$moonlight". The launcher is bounded at 50 s, below the tests' CTest TIMEOUT, so a hang
# fails the test here with the output so far.
set -u
launcher=$1 moonlight=$2 work=$3 expected=$4 rank0=$5 rank1=$6 setup=${7:-}
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
if [ -n "$setup" ] && ! eval "$setup"; then
  echo "FAIL: the setup failed: $setup"
  exit 1
fi
export MOONLIGHT_BIN=$moonlight MOONLIGHT_RANK0_ARGS=$rank0 MOONLIGHT_RANK1_ARGS=$rank1
# shellcheck disable=SC2016,SC2086  # the inner script expands on each rank; the launcher is words
output=$(timeout -k 5 50 $launcher bash -c \
  'if [ "${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}" = 1 ]; then args=$MOONLIGHT_RANK1_ARGS; else args=$MOONLIGHT_RANK0_ARGS; fi
   eval "exec \"\$MOONLIGHT_BIN\" train $args"' 2>&1)
status=$?
printf '%s\n' "$output"
if [ $status -eq 124 ] || [ $status -eq 137 ]; then
  echo "FAIL: the ranks were still running after 50 s (a hang)"
  exit 1
fi
if [ -z "$expected" ]; then
  [ $status -eq 0 ] && grep -q '^trained ' <<<"$output" && echo "PASS: trained" && exit 0
  echo "FAIL: the launcher exited $status"
  exit 1
fi
if [ $status -eq 0 ]; then
  echo "FAIL: the launcher exited 0"
  exit 1
fi
if ! grep -qE "$expected" <<<"$output"; then
  echo "FAIL: no line matches: $expected"
  exit 1
fi
if grep -q '^trained ' <<<"$output"; then
  echo "FAIL: a rank finished training"
  exit 1
fi
echo "PASS: the launcher exited $status with the message"
