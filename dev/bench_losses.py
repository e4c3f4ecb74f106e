"""
The contrastive losses on CPU: rank space (moelora.py) against the d_out-space references (tests/test_losses.py),
forward + backward w.r.t. x, A and B, in float32 and under bfloat16 autocast.

    python dev/bench_losses.py [repeats] [threads]

Shapes: the demo's (n_embd 128, 4 experts of rank 2, top-2, 64 sampled tokens, batch 16 x 192 tokens),
summed over the four adapted linears of one block (c_attn 128->384, attn.c_proj 128->128, c_fc 128->512,
mlp.c_proj 512->128); and a GPT-2-small-like layer (768->768, 8 experts of rank 2, top-2, 256 sampled
tokens of 8 x 1024). Old and new alternate within each repeat, since the CPU is shared and noisy; each
row prints the median ms per call over the repeats and the spread (min-max).
"""

import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from test_losses import LOSSES  # noqa: E402

CASES = {  # name: (layers as (d_in, d_out), E, r, k, N, sampled tokens)
    "demo block": ([(128, 384), (128, 128), (128, 512), (512, 128)], 4, 2, 2, 16 * 192, 64),
    "GPT-2-small layer": ([(768, 768)], 8, 2, 2, 8 * 1024, 256),
}


def inputs(layers, E, r, k, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for d_in, d_out in layers:
        x = torch.randn(N, d_in, generator=g)
        A = torch.randn(E, r, d_in, generator=g) / d_in ** 0.5
        B = torch.randn(E, d_out, r, generator=g) * 0.02
        chosen = torch.zeros(N, E, dtype=torch.bool).scatter_(1, torch.randn(N, E, generator=g).topk(k, -1).indices, True)
        out.append((x.requires_grad_(), A.requires_grad_(), B.requires_grad_(), chosen))
    return out


def time_ms(loss_fn, case, k, S, autocast, calls=5):
    """ms per forward + backward over all the case's layers, the mean of `calls` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        for x, A, B, chosen in case:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(x, A, B, chosen, 0.07, S, k)
            torch.autograd.grad(loss, (x, A, B))
    return 1000 * (time.perf_counter() - t0) / calls


def main(repeats):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median (min-max) ms per forward+backward")
    print(f"{'case':18s} {'loss':7s} {'math':9s} {'d_out space':>22s} {'rank space':>22s} {'speed-up':>8s}")
    for name, (layers, E, r, k, N, S) in CASES.items():
        case = inputs(layers, E, r, k, N)
        for variant, (new, ref) in LOSSES.items():
            for autocast in (False, True):
                for f in (ref, new):  # warm-up
                    time_ms(f, case, k, S, autocast, calls=2)
                times = {ref: [], new: []}
                for rep in range(repeats):
                    for f in ((ref, new) if rep % 2 == 0 else (new, ref)):
                        times[f].append(time_ms(f, case, k, S, autocast))
                cells = [f"{statistics.median(t):7.2f} ({min(t):6.2f}-{max(t):6.2f})" for t in times.values()]
                speedup = statistics.median(times[ref]) / statistics.median(times[new])
                print(f"{name:18s} {variant:7s} {'bf16 ac' if autocast else 'fp32':9s} {cells[0]:>22s} "
                      f"{cells[1]:>22s} {speedup:7.1f}x", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2:  # one thread is steadier when other work shares the cores
        torch.set_num_threads(int(sys.argv[2]))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
