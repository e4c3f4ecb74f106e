# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
for v in echo5000 echo8000,arith15 echoshort8000 echoshort12000 echo8000; do
  python3 dev/variant_prepare.py $v --out=out/data_${v/,/_} > "$OUT/prepare_${v/,/_}.log" 2>&1 &
done; wait
pre p5 --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_echo5000 &
pre p8a --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_echo8000_arith15 &
pre p8s --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_echoshort8000 &
pre p12s --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_echoshort12000 &
pre p8L --dtype=bfloat16 --max_iters=2200 --data_dir=out/data_echo8000 &
wait; echo "bases at $((SECONDS-start))s"
for b in p5 p8a p8s p12s p8L; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
ft A5 p5 --max_iters=900 --data_dir=out/data_echo5000 &
ft A8a p8a --max_iters=900 --data_dir=out/data_echo8000_arith15 &
ft A8s p8s --max_iters=900 --data_dir=out/data_echoshort8000 &
ft A12s p12s --max_iters=900 --data_dir=out/data_echoshort12000 &
ft A8L p8L --max_iters=900 --data_dir=out/data_echo8000 &
ft B8a p8a --max_iters=900 --data_dir=out/data_echo8000_arith15 --seed=2 &
ft B12s p12s --max_iters=900 --data_dir=out/data_echoshort12000 --seed=2 &
wait; echo "all at $((SECONDS-start))s"
