#!/usr/bin/env bash
# Third device call: all kernel tests (after the error-message fix), then a profile of one e2e step.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=16
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
python3 -c "import moelora; moelora.load_kernel(); print('kernel built and loaded')" 2>&1 | tail -3
timeout 200 python3 -m pytest -q -rs tests/test_kernel.py 2>&1 | tee "$OUT/tests_kernel.log" | tail -8
PYTHONPATH=. timeout 200 python3 dev/profile_e2e.py cuda 2>&1 | grep -v Warning | tee "$OUT/profile_e2e.log"
