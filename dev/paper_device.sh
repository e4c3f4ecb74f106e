#!/usr/bin/env bash
# One device call of the paper experiment: the grid (resumable: a call goes on where the last one stopped, while
# the machine keeps out/paper) until DEADLINE seconds, the report, then the extra steps named in STEPS:
#   DEADLINE=420 STEPS="llmadapters" bash dev/paper_device.sh [experiment.py arguments]
# Back in $OUT: results/paper's files (the report), paper.log, runs.tgz (every run's logs and results, no weights).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
timeout $(( ${DEADLINE:-420} + 120 )) python3 experiment.py config/paper.toml --deadline_s="${DEADLINE:-420}" "$@" \
    2>&1 | tee "$OUT/paper.log"
echo "=== experiment: exit ${PIPESTATUS[0]}"
cp results/paper/* "$OUT/" 2>/dev/null
tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.bin' out/paper
for step in $STEPS; do
  case $step in
    llmadapters) MOELORA_E2E_GPT2=gpt2-xl timeout 200 python3 -m pytest -q -rs -s tests/test_llm_adapters.py \
                   -k end_to_end 2>&1 | tee "$OUT/llmadapters.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
