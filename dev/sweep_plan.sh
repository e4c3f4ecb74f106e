# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
python3 dev/variant_prepare.py aquadigits --out=out/data_aquadigits > "$OUT/prepare_aquadigits.log" 2>&1
pre pz --dtype=bfloat16 --max_iters=1800 &
pre pd --dtype=bfloat16 --max_iters=1800 --data_dir=out/data_aquadigits &
wait; echo "bases at $((SECONDS-start))s"
for b in pz pd; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
ft Z pz &
ft Zs pz --seed=2 &
ft D pd --data_dir=out/data_aquadigits &
ft Ds pd --data_dir=out/data_aquadigits --seed=2 &
wait; echo "all at $((SECONDS-start))s"
