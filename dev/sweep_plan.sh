# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
for v in arith20 lists1000 words2-5; do
  python3 dev/variant_prepare.py $v --out=out/data_$v > "$OUT/prepare_$v.log" 2>&1 &
done; wait
pre pa --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_arith20 &
pre pl --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_lists1000 &
pre pw --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_words2-5 &
wait; echo "bases at $((SECONDS-start))s"
for b in pa pl pw; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
ft Ga pa --data_dir=out/data_arith20 &
ft Gl pl --data_dir=out/data_lists1000 &
ft Gw pw --data_dir=out/data_words2-5 &
wait; echo "all at $((SECONDS-start))s"
