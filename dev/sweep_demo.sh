#!/usr/bin/env bash
# Demo-recipe sweep on the GPU machine (fp32, several small runs at once on one GPU): pretrain bases, fine-tune
# variants, score each and probe where commonsense fails (dev/probe_commonsense.py). Logs go to $OUT.
#   OUT=... bash dev/sweep_demo.sh
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-out/sweep}; mkdir -p "$OUT"
python3 -c "import tiktoken" 2>/dev/null || pip install -q --no-index --find-links .whl tiktoken regex 2>&1 | tail -2
python3 -m data.prepare --out=out/data > "$OUT/prepare.log" 2>&1 || { cat "$OUT/prepare.log"; exit 1; }
C=${C:-"--device=cuda --dtype=float32"}
pre() {  # name, overrides...
  local n=$1; shift
  python3 train.py config/demo_pretrain.toml $C --out_dir=out/sw/$n "$@" > "$OUT/$n.log" 2>&1
  echo "$n: $(grep 'val loss' "$OUT/$n.log" | tail -1)"
}
ft() {  # name, base, overrides...
  local n=$1 b=$2; shift 2
  python3 train.py config/demo_finetune.toml $C --init_from=out/sw/$b/ckpt.pt --out_dir=out/sw/$n "$@" > "$OUT/$n.log" 2>&1
  python3 evaluate.py --ckpt=out/sw/$n/ckpt.pt --routing=false > "$OUT/$n.eval.log" 2>&1
  python3 -m dev.probe_commonsense --ckpt=out/sw/$n/ckpt.pt --dump="$OUT/$n.outputs.jsonl" > "$OUT/$n.probe.log" 2>&1
  echo "== $n ($b $*): $(grep 'val loss' "$OUT/$n.log" | tail -1) $(grep -E '^\| [A-Za-z0-9]+ \| [0-9]' "$OUT/$n.eval.log" | tail -1)"
}
source "${SWEEP:-dev/sweep_plan.sh}"
wait
for f in "$OUT"/*.probe.log; do echo "### $f"; grep -v "^    " "$f"; done
# the device sends back at most 8 files: every log in one archive
(cd "$OUT" && tar -czf logs.tgz --remove-files --exclude=logs.tgz -- *)
