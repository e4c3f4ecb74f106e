"""Where a new padded length's one-off cost comes from (dev/gpt2_sizes.py measures ~0.2 s per new length on the
H200, whatever the adapter): GPT-2-small's shape with LoRA r16 (batch 16, bf16 autocast), forward and backward
at lengths this process has not run, each run twice, under each attention backend that
F.scaled_dot_product_attention may pick, then the same without attention's backward (forward only, no grad).
Prints, per variant, the median first and second time of a length and the cudaMalloc calls the first run made.

    python -m dev.new_length_cost                 # on a CUDA GPU, about a minute
"""

import statistics
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import moelora
from model import GPT, GPTConfig

BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
LENGTHS_PER_VARIANT = 6


def timed(gpt, idx, backward):
    torch.cuda.synchronize()
    mallocs = torch.cuda.memory_stats().get("segment.all.allocated", 0)
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(backward):
        _, loss = gpt(idx[:, :-1], idx[:, 1:])
    if backward:
        loss.backward()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cuda.memory_stats().get("segment.all.allocated", 0) - mallocs


def main():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=1024)).cuda()
    moelora.mark_only_adapters_trainable(moelora.inject(gpt, moelora.AdapterConfig(
        kind="lora", r=16, alpha=32.0, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))))
    timed(gpt, torch.randint(0, 50257, (16, 257), device="cuda"), True)  # warm-up: lazy initialisation
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}")
    variants = [(name, backend, True) for name, backend in BACKENDS.items()] + [("default, forward only", None, False)]
    next_length = 100  # every variant its own lengths, none run before in this process
    for name, backend, backward in variants:
        first, again, mallocs = [], [], []
        try:
            with sdpa_kernel(backend) if backend is not None else nullcontext():
                for _ in range(LENGTHS_PER_VARIANT):
                    idx = torch.randint(0, 50257, (16, next_length + 1), device="cuda")
                    next_length += 3
                    t, m = timed(gpt, idx, backward)
                    first.append(t)
                    mallocs.append(m)
                    again.append(timed(gpt, idx, backward)[0])
        except RuntimeError as e:  # a backend this GPU or build lacks
            print(f"  {name:22s} not available: {str(e).splitlines()[0][:100]}")
            continue
        new_ms, again_ms = 1e3 * statistics.median(first), 1e3 * statistics.median(again)
        print(f"  {name:22s} new length {new_ms:7.1f} ms, again {again_ms:6.1f} ms, one-off {new_ms - again_ms:6.1f} ms;"
              f" cudaMalloc calls in the first runs {mallocs}", flush=True)


if __name__ == "__main__":
    main()
