"""Where a GPT-2-124M MoELoRA training step spends its time (H100, bf16, batch 8x1024): a torch.profiler
table of one eager step, GPU-busy time against wall time, and the graph breaks torch.compile meets.

    python -m dev.profile_e2e [--impl=cuda|ref]
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
    impl: str = "cuda"  # the MoELoRA op's implementation: "cuda" (the kernel) or "ref"


torch.manual_seed(0)
cfg = e2e_configs()["MoELoRA kernel"]
cfg.impl = cli.parse(ProfileConfig).impl
model = moelora.mark_only_adapters_trainable(moelora.inject(GPT(GPTConfig()), cfg)).cuda()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
idx = torch.randint(0, 50257, (8, 1025), device="cuda")


def step(m):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        loss = loss + moelora.auxiliary_loss(moelora.collect_aux(model), cfg)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step(model)
torch.cuda.synchronize()
t0 = time.perf_counter()
step(model)
torch.cuda.synchronize()
print(f"eager step: {1e3 * (time.perf_counter() - t0):.1f} ms wall")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    step(model)
    torch.cuda.synchronize()
events = prof.key_averages()
gpu_us = sum(e.self_device_time_total for e in events)
print(f"GPU busy (sum of kernel times) in the profiled step: {gpu_us / 1e3:.1f} ms; kernels launched: "
      f"{sum(e.count for e in events if e.self_device_time_total > 0)}")
print(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
print(events.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))

explanation = torch._dynamo.explain(model)(idx[:, :-1], idx[:, 1:])
print(f"torch.compile: {explanation.graph_count} graphs, {explanation.graph_break_count} graph breaks")
for reason in explanation.break_reasons[:5]:
    print("  break:", str(reason.reason)[:300])
