# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side). Checked in: sweep 24,
# the demo's recipe (data/ as checked in) on three base seeds, 1337 being the demo's
start=$SECONDS
for s in 1337 2 3; do pre r$s --dtype=bfloat16 --seed=$s & done
wait; echo "bases at $((SECONDS-start))s"
for s in 1337 2 3; do echo "r$s $(python3 -m dev.probe_lookup --ckpt=out/sw/r$s/ckpt.pt)"; done
for s in 1337 2 3; do ft R$s r$s & done
wait; echo "all at $((SECONDS-start))s"
