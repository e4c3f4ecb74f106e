#!/usr/bin/env bash
# One call on the GPU machine (it starts bare): build the kernel, run the GPU tests, then bench.py.
#   bash dev/gpu_check.sh            logs and bench.json go to $OUT (default out/device)
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=16
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$(date +%s)
python3 -c "import kernel; kernel.load_kernel(); print('kernel built and loaded')" 2>&1 | tee "$OUT/build.log" | tail -5
echo "build: $(( $(date +%s) - start )) s"
start=$(date +%s)
timeout 240 python3 -m pytest -q -rs tests/test_kernel.py 2>&1 | tee "$OUT/tests_kernel.log" | tail -12
echo "kernel tests: $(( $(date +%s) - start )) s"
start=$(date +%s)
timeout 200 python3 -m pytest -q -rs tests/test_gpu.py tests/test_model.py tests/test_op.py 2>&1 | tee "$OUT/tests_gpu.log" | tail -12
echo "model tests: $(( $(date +%s) - start )) s"
timeout 330 python3 bench.py --json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
