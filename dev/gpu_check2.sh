#!/usr/bin/env bash
# Second device call: the bad-input kernel tests alone (a segfault seen in the full file), the rest of the
# kernel tests, the compiled end-to-end bench, and a native backtrace of the segfault if it recurs.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=16
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -c "import moelora; moelora.load_kernel(); print('kernel built and loaded')" 2>&1 | tail -3
timeout 60 python3 -m pytest -q -rs tests/test_kernel.py -k "rejects_bad_inputs" 2>&1 | tee "$OUT/bad_inputs.log" | tail -8
bad=$?
timeout 200 python3 -m pytest -q -rs tests/test_kernel.py -k "not multiples" 2>&1 | tee "$OUT/tests_kernel.log" | tail -8
timeout 330 python3 bench.py --compiled-only --json="$OUT/bench_compiled.json" 2>&1 | tee "$OUT/bench_compiled.log" | grep -v Warning
if [ $bad -ne 0 ]; then
  timeout 90 cuda-gdb -batch -ex run -ex bt --args python3 -m pytest -q -x tests/test_kernel.py -k "multiples" \
    2>&1 | tee "$OUT/gdb.log" | grep -E "^#|signal|SIG" | head -30
fi
