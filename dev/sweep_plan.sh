# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
pre pf --dtype=bfloat16 --max_iters=1800 &
pre pf2 --dtype=bfloat16 --max_iters=1800 --seed=2 &
wait; echo "bases at $((SECONDS-start))s"
for b in pf pf2; do echo "$b $(python3 dev/probe_lookup.py --ckpt=out/sw/$b/ckpt.pt)"; done
ft F pf &
ft Fs pf --seed=2 &
ft Fl pf --adapter=lora --lora_r=8 --lora_alpha=16 &
ft F2 pf2 &
wait; echo "all at $((SECONDS-start))s"
