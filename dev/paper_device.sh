#!/usr/bin/env bash
# One device call of the paper experiment: the grid (resumable: a call goes on where the last one stopped, while
# the machine keeps out/paper) until DEADLINE seconds, the report, then the extra steps named in STEPS:
#   DEADLINE=420 STEPS="repro llmadapters" E2E=gpt2 bash dev/paper_device.sh [experiment.py arguments]
# repro: experiment.py --reproduce=moelora; llmadapters: tests/test_llm_adapters.py's end-to-end test at GPT-2 size
# E2E (default gpt2-xl).
# Back in $OUT: results/paper's files (the report), paper.log, runs.tgz (every run's logs and results, no weights),
# base.pt.part-* (cat them into out/paper/base/ckpt.pt, untar runs.tgz, and carry out/paper to go on).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
if [ -n "$REQUIRE_BASE" ] && [ ! -f out/paper/base/ckpt.pt ]; then  # a fresh machine: the grid would start over
  echo "out/paper/base is not here (the machine was not kept): stopping"; exit 3
fi
timeout $(( ${DEADLINE:-420} + 120 )) python3 experiment.py config/paper.toml --deadline_s="${DEADLINE:-420}" "$@" \
    2>&1 | tee "$OUT/paper.log"
echo "=== experiment: exit ${PIPESTATUS[0]}"
cp results/paper/* "$OUT/" 2>/dev/null
tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.bin' out/paper
if [ -f out/paper/base/ckpt.pt ]; then  # the base without its optimizer state, in parts under the 16 MiB a file
  python3 -c "import torch; c = torch.load('out/paper/base/ckpt.pt', weights_only=False); c['optimizer'] = None; \
torch.save(c, '/tmp/base.pt')" && split -b 15M /tmp/base.pt "$OUT/base.pt.part-"
fi
for step in $STEPS; do
  case $step in
    repro) timeout 200 python3 experiment.py config/paper.toml --reproduce=moelora 2>&1 | tee "$OUT/reproduce.log"
           cp results/paper/reproduce.md "$OUT/" ;;
    llmadapters) MOELORA_E2E_GPT2=${E2E:-gpt2-xl} timeout ${E2E_LIMIT:-400} python3 -m pytest -q -rs -s \
                   tests/test_llm_adapters.py -k end_to_end 2>&1 | tee "$OUT/llmadapters.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
