# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
pre p1; echo "p1 at $((SECONDS-start))s"
E1="--n_experts=1 --top_k=1 --lora_r=8 --lora_alpha=16 --contrastive=none"
ft b1 p1 $E1 --impl=ref &
ft b2 p1 $E1 --impl=cuda &
ft b3 p1 --impl=ref &
ft b4 p1 --adapter=lora --lora_r=8 --lora_alpha=16 &
ft b5 p1 --seed=2 &
ft b6 p1 --adapter=lora --lora_r=8 --lora_alpha=16 --seed=2 &
wait; echo "all at $((SECONDS-start))s"
