# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side). Checked in: the demo's
# recipe on two base seeds, each fine-tuned with two seeds (sweep 19's first half, at the recipe it adopted)
start=$SECONDS
pre pz --dtype=bfloat16 &
pre pz2 --dtype=bfloat16 --seed=2 &
wait; echo "bases at $((SECONDS-start))s"
for b in pz pz2; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
ft Z pz &
ft Zs pz --seed=2 &
ft Z2 pz2 &
ft Z2s pz2 --seed=2 &
wait; echo "all at $((SECONDS-start))s"
