#!/usr/bin/env bash
# One call on the GPU machine, which starts bare each time: build the kernel, then the named steps, each
# logged to $OUT/<step>.log (the machine sends back at most 8 files: logs.tgz holds every log, beside the
# JSON results).
#   bash dev/device_run.sh STEP...
# Steps: check (NaN-poisoned kernel check, both tile configurations), gputests (the GPU-specific test files),
# tests (the whole suite), graphtests (tests/test_gpu.py alone), bench (bench.py's layer, whole, e2e and train
# sections) or one at a time: layer (layer and whole), e2e, train, traincompile (the train section's --compile runs
# alone), compiled (the torch.compile section, batch 8);
# autotest (impl="auto"'s choice), llmadapters (LLM-Adapters' files -> prepare -> train -> evaluate at gpt2-xl's
# shape), profile (dev/profile_e2e.py), timing (per-kernel timing), sizes (dev/gpt2_sizes.py), nosplit (bench layer
# section with the kernel's column splits off, to compare), newlength (dev/new_length_cost.py: where a new padded
# length's one-off cost comes from), nanprobe (dev/compiled_nan_probe.py),
# inductorprobe (dev/inductor_expert_probe.py). logs.tgz is rewritten after every
# step, so a call cut off at its time limit still brings back the logs of the steps it finished.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=16
run() {  # name, timeout, command...: the command's output to the terminal and to logs/name.log
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "=== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
  tar -czf "$OUT/logs.tgz" -C "$OUT" logs
}
run build 300 python3 -c "import kernel; kernel.load_kernel(); print('kernel loaded')"
for step in "$@"; do
  case $step in
    check) for bm in 128 64; do
             MOELORA_POISON=1 MOELORA_BM=$bm run check$bm 120 python3 -m dev.check_and_time --check_only=1
           done ;;
    gputests) run gputests 400 python3 -m pytest -q -rs tests/test_kernel.py tests/test_gpu.py tests/test_op.py \
                tests/test_losses.py tests/test_adapters.py tests/test_model.py tests/test_export.py tests/test_hf_tokenizer.py ;;
    tests) run tests 600 python3 -m pytest -q -rs tests ;;
    bench) run bench 480 python3 bench.py --sections=layer,whole,e2e,train --json="$OUT/bench.json" ;;
    layer) run layer 240 python3 bench.py --sections=layer,whole --json="$OUT/bench_layer.json" ;;
    e2e) run e2e 240 python3 bench.py --sections=e2e --json="$OUT/bench_e2e.json" ;;
    train) run train 450 python3 bench.py --sections=train --json="$OUT/bench_train.json" ;;
    traincompile) run traincompile 450 python3 bench.py --sections=train --train_runs=compile \
                    --json="$OUT/bench_traincompile.json" ;;
    compiled) run compiled 400 python3 bench.py --sections=compiled --batches=8 --json="$OUT/bench_compiled.json" ;;
    graphtests) run graphtests 200 python3 -m pytest -q -rs tests/test_gpu.py ;;
    autotest) run autotest 120 python3 -m pytest -q -rs tests/test_kernel.py -k auto ;;
    llmadapters) MOELORA_E2E_GPT2=gpt2-xl run llmadapters 500 python3 -m pytest -q -rs -s tests/test_llm_adapters.py \
                   -k end_to_end ;;
    nosplit) MOELORA_SPLITS=1 run nosplit 200 python3 bench.py --sections=layer,whole ;;
    profile) run profile 200 python3 -m dev.profile_e2e ;;
    timing) run timing 120 python3 -m dev.check_and_time --time_only=1 ;;
    sizes) run sizes 500 python3 -m dev.gpt2_sizes --json="$OUT/gpt2_sizes.json" ;;
    newlength) run newlength 150 python3 -m dev.new_length_cost ;;
    nanprobe) run nanprobe 400 python3 -m dev.compiled_nan_probe ;;
    inductorprobe) run inductorprobe 300 python3 -m dev.inductor_expert_probe
                   # which of inductor's generated kernels are mix-order reductions
                   grep -rl "MixOrderReductionGrid" /tmp/torchinductor_* 2>/dev/null | head -20 | tee "$OUT/logs/mixorder.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
rm -rf "$OUT/logs"
