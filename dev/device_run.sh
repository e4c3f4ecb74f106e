#!/usr/bin/env bash
# One call on the GPU machine, which starts bare each time: build the kernel, check it (NaN-poisoned
# outputs, both tile configurations), run the GPU tests, then the benchmark. Logs and JSON go to $OUT.
#   dev/device_run.sh [check] [tests] [bench] [quick] [timing]   (no argument: check tests bench timing)
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
steps=${*:-check tests bench timing}
has() { [[ " $steps " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=16
start=$(date +%s)
python3 -c "import kernel; kernel.load_kernel(); print('kernel loaded')" 2>&1 | tee "$OUT/build.log" | tail -30
echo "build: $(( $(date +%s) - start )) s"
if has check; then  # NaN-poisoned outputs, both tile configurations, every dtype
  for bm in 128 64; do
    MOELORA_POISON=1 MOELORA_BM=$bm timeout 120 python3 -m dev.check_and_time --check_only=1 2>&1 | tee "$OUT/check$bm.log"
  done
fi
if has tests; then
  start=$(date +%s)
  timeout 200 python3 -m pytest -q -rs tests/test_kernel.py 2>&1 | tee "$OUT/tests.log" | tail -25 \
    || timeout 200 python3 -m pytest -q -rs -n 4 tests/test_kernel.py 2>&1 | tee "$OUT/tests_xdist.log" | tail -40
  echo "tests: $(( $(date +%s) - start )) s"
fi
if has bench; then
  q=""; has quick && q="--quick"
  timeout 330 python3 bench.py $q --json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if has timing; then  # per-kernel timing, without poison (its NaN fills would be timed too)
  for bm in 128 64; do
    MOELORA_BM=$bm timeout 60 python3 -m dev.check_and_time --time_only=1 2>&1 | tee "$OUT/time$bm.log"
  done
fi
