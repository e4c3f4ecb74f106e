"""Where a GPT-2-124M training step spends its time (bf16 autocast, batch 8 x 1024): for LoRA r16 and MoELoRA
8 x r2 (the kernel) side by side, one eager step's wall time, the CPU time the profiler counts, the GPU time
its kernels take, how many kernels it launches, and the top ops by GPU and by CPU time; then the graph
breaks torch.compile meets in the MoELoRA model.

    python -m dev.profile_e2e [--configs=LoRA r16,MoELoRA kernel] [--batch=8] [--rows=12]
"""

import time
from dataclasses import dataclass

import torch

import cli
import moelora
from bench import e2e_configs
from model import GPT, GPTConfig


@dataclass
class ProfileConfig:
    configs: tuple = ("LoRA r16", "MoELoRA kernel")  # names in bench.e2e_configs()
    batch: int = 8
    rows: int = 12  # rows of each profiler table


def profile(name, cfg, batch, rows):
    torch.manual_seed(0)
    model = moelora.mark_only_adapters_trainable(moelora.inject(GPT(GPTConfig()), cfg)).cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    idx = torch.randint(0, 50257, (batch, 1025), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss = loss + moelora.auxiliary_loss(moelora.collect_aux(model), cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_ms = sum(e.self_device_time_total for e in events) / 1e3
    cpu_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"\n=== {name}: eager step {1e3 * wall:.1f} ms wall; profiled step: CPU {cpu_ms:.1f} ms (profiler-inflated), "
          f"GPU kernels {gpu_ms:.1f} ms, {launches} launches")
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=50))
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50))
    return model, idx


def main(argv=None):
    cfg = cli.parse(ProfileConfig, argv)
    configs = e2e_configs()
    for name in cfg.configs:
        model, idx = profile(name, configs[name], cfg.batch, cfg.rows)
    explanation = torch._dynamo.explain(model)(idx[:, :-1], idx[:, 1:])
    print(f"torch.compile ({cfg.configs[-1]}): {explanation.graph_count} graphs, "
          f"{explanation.graph_break_count} graph breaks")
    for reason in explanation.break_reasons[:5]:
        print("  break:", str(reason.reason)[:300])


if __name__ == "__main__":
    main()
