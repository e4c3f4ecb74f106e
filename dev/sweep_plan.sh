# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side). Checked in: sweep 23,
# the "sameA" variant with 2,000 table documents, and with 3,000 beside 20,000 echo documents, three seeds each
start=$SECONDS
python3 dev/variant_prepare.py sameA,samedocs2000 --out=out/data_a2 > "$OUT/prepare_a2.log" 2>&1 || { cat "$OUT/prepare_a2.log"; exit 1; }
python3 dev/variant_prepare.py sameA,echo20000 --out=out/data_a3e > "$OUT/prepare_a3e.log" 2>&1 || { cat "$OUT/prepare_a3e.log"; exit 1; }
echo "data at $((SECONDS-start))s"
for s in 1337 2 3; do
  pre a2s$s --dtype=bfloat16 --seed=$s --data_dir=out/data_a2 &
  pre a3es$s --dtype=bfloat16 --seed=$s --data_dir=out/data_a3e &
done
wait; echo "bases at $((SECONDS-start))s"
for b in a2s1337 a2s2 a2s3 a3es1337 a3es2 a3es3; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
for s in 1337 2 3; do
  ft Fa2s$s a2s$s --data_dir=out/data_a2 &
  ft Fa3es$s a3es$s --data_dir=out/data_a3e &
done
wait; echo "all at $((SECONDS-start))s"
