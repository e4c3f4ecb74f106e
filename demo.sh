#!/usr/bin/env bash
# The whole pipeline on a CPU, offline, from a fresh clone: set up .venv, build the bundled data, pretrain
# the small base model (once; later runs reuse it), fine-tune MoELoRA adapters and LoRA beside them at equal
# parameters, print their accuracy table.
#
#     bash demo.sh            # about 15 minutes on 2 cores the first time (later runs reuse the base)
#
# Everything it writes goes to .venv/ and out/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")"
start=$SECONDS
stamp() { echo "[demo $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s] $*"; }

if [ ! -x .venv/bin/python ]; then
    stamp "creating .venv"
    python3 -m venv .venv
fi
. .venv/bin/activate
stamp "installing (torch's CPU build first, then the project with its test and plot extras)"
pip install -q torch==2.13.0
pip install -q -e '.[test,plot]'

stamp "building the data into out/data"
python -m data.prepare --out=out/data

if [ -f out/demo/base/ckpt.pt ]; then
    stamp "reusing the base model in out/demo/base (delete it to pretrain again)"
else
    stamp "pretraining the base model"
    rm -rf out/demo/base.tmp
    python train.py config/demo_pretrain.toml --out_dir=out/demo/base.tmp
    mv out/demo/base.tmp out/demo/base  # only a finished base is cached
fi

stamp "fine-tuning MoELoRA adapters on the 11 tasks"
rm -rf out/demo/moelora out/demo/lora  # fresh runs: train.py will not write over an earlier run's checkpoint
python train.py config/demo_finetune.toml
stamp "fine-tuning LoRA r8 on the same data, for the comparison (as many adapter parameters)"
python train.py config/demo_finetune.toml --adapter.kind=lora --adapter.r=8 --adapter.alpha=16 --out_dir=out/demo/lora
stamp "evaluating both"
python evaluate.py --ckpt=out/demo/lora/ckpt.pt,out/demo/moelora/ckpt.pt --out=out/demo
stamp "done"
