set -e
cd /work/main
P=.venv/bin/python
W=/tmp/cputps; rm -rf $W; mkdir -p $W
$P -m data.prepare --out=$W/data > $W/prep.log 2>&1
$P train.py config/demo_pretrain.toml --data_dir=$W/data --out_dir=$W/base --max_iters=1 --warmup_iters=1 --eval_iters=1 > $W/base.log 2>&1
for rep in 1 2; do
  for v in lora moelora; do
    extra=""; [ $v = lora ] && extra="--adapter.kind=lora --adapter.r=8 --adapter.alpha=16"
    $P train.py config/demo_finetune.toml --init_from=$W/base/ckpt.pt --data_dir=$W/data --out_dir=$W/$v$rep \
      --max_iters=200 --log_interval=50 --eval_interval=200 --eval_iters=1 $extra > $W/$v$rep.log 2>&1
    echo "$v rep$rep: $(grep 'tok/s' $W/$v$rep.log | awk -F'|' '{print $7}' | tr '\n' ' ')"
  done
done
