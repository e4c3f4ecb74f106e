# sourced by dev/sweep_demo.sh: which runs, in which order (& runs them side by side)
start=$SECONDS
pre q --dtype=bfloat16 --max_iters=1800; echo "q at $((SECONDS-start))s"
ft h1 q --max_iters=900 &
ft h2 q --max_iters=900 --lr=5e-3 --min_lr=5e-4 &
ft h3 q --max_iters=900 --lr=3e-3 --min_lr=3e-4 &
ft h4 q --max_iters=450 --batch_size=32 &
ft h5 q --max_iters=900 --n_experts=2 --top_k=1 --lora_r=4 --lora_alpha=8 &
ft h6 q --max_iters=900 --n_experts=2 --top_k=2 --lora_r=4 --lora_alpha=8 &
wait; echo "all at $((SECONDS-start))s"
