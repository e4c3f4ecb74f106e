"""
Where the demo's CPU fine-tuning step goes (config/demo_finetune.toml, float32): step times of LoRA r8 and
of MoELoRA with its parts taken away one at a time, then the ops MoELoRA adds (torch.profiler).

    python dev/profile_cpu_step.py [--init_from=out/base20/ckpt.pt] [--repeats=7] [--threads=1]

Needs the prepared data (python -m data.prepare --out=out/data) and a base checkpoint. Every variant runs
the same batches (train.py's Data, steps 0..9) with train.py's model building and loss; variants
alternate within each repeat (the CPU is shared and noisy) and the table prints the median ms per step
and its spread. The ablations patch moelora for timing only; they change what is computed. Then the
profiler's ops that MoELoRA adds to LoRA's step (self CPU time, MoELoRA minus LoRA, per step).
"""

import os
import statistics
import sys
import time
from contextlib import ExitStack
from unittest import mock

import torch
from torch.profiler import profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import cli  # noqa: E402
import moelora  # noqa: E402
import train  # noqa: E402
from test_losses import contrastive_loss_expert_ref  # noqa: E402

STEPS = 10


class FixedRouter(moelora.Router):
    """Ablation: the same gates' shape, with no router maths (every token on experts 0 and 1)."""

    def forward(self, x):
        chosen = torch.zeros(x.shape[0], self.n_experts, dtype=torch.bool, device=x.device)
        chosen[:, :self.top_k] = True
        gates = chosen.float() / self.top_k
        return moelora.Routing(gates=gates, probs=gates, chosen=chosen)


# name: (train.py overrides, patches applied while the model is built and run)
VARIANTS = {
    "LoRA r8": (["--adapter=lora", "--lora_r=8", "--lora_alpha=16"], []),
    "MoELoRA, d_out-space loss (8702c2f)": ([], [("moelora.CONTRASTIVE_LOSSES",
                                                   {"expert": contrastive_loss_expert_ref})]),
    "MoELoRA": ([], []),
    "- contrastive": (["--contrastive=none"], []),
    "- contrastive, balance": (["--contrastive=none"], [("moelora.balance_loss", lambda p, c: p.new_zeros(()))]),
    "- contrastive, balance, stats": (["--contrastive=none"], [
        ("moelora.balance_loss", lambda p, c: p.new_zeros(())),
        ("moelora.MoELoRALinear.routing_stats", property(lambda self: {}))]),
    "- contrastive, balance, stats, router": (["--contrastive=none"], [
        ("moelora.balance_loss", lambda p, c: p.new_zeros(())),
        ("moelora.MoELoRALinear.routing_stats", property(lambda self: {})),
        ("moelora.ROUTERS", {"topk": FixedRouter})]),
}


def build(argv, overrides):
    cfg = cli.parse(train.TrainConfig, ["config/demo_finetune.toml"] + argv + overrides)
    data = train.Data(cfg.data_dir, cfg.mode, cfg.block_size, cfg.seed)
    model, _ = train.build_model(cfg, data.meta["vocab_size"], None)
    data.block_size = model.config.block_size
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu")
    batches = [data.batch("train", i, 0, cfg.batch_size) for i in range(STEPS)]
    return cfg, model, optimizer, batches


def run_steps(cfg, model, optimizer, batches):
    """ms per step over the batches, as train.py takes a step (one micro-batch, float32)."""
    t0 = time.perf_counter()
    for x, y, mask in batches:
        _, lm_loss = model(x, y, loss_mask=mask)
        balance, contrastive = train.aux_terms(model, cfg)
        loss = lm_loss + cfg.balance_coef * balance + cfg.contrastive_coef * contrastive
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - t0) / len(batches)


def main(argv):
    repeats, threads = 7, torch.get_num_threads()
    for a in list(argv):
        if a.startswith(("--repeats=", "--threads=")):
            key, value = a[2:].split("=")
            repeats, threads = (int(value), threads) if key == "repeats" else (repeats, int(value))
            argv.remove(a)
    # one thread when other work shares the cores: two OpenMP threads then wait on each other at every op
    torch.set_num_threads(threads)
    argv = argv or ["--init_from=out/base20/ckpt.pt"]
    torch.manual_seed(0)
    built = {}
    for name, (overrides, patches) in VARIANTS.items():
        with ExitStack() as stack:
            for target, value in patches:
                stack.enter_context(mock.patch(target, value))
            built[name] = build(argv, overrides)
    times = {name: [] for name in VARIANTS}
    for rep in range(repeats + 1):  # the first round warms up
        names = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
        for name in names:
            with ExitStack() as stack:
                for target, value in VARIANTS[name][1]:
                    stack.enter_context(mock.patch(target, value))
                ms = run_steps(*built[name])
            if rep > 0:
                times[name].append(ms)
    tokens = statistics.mean(x.numel() for x, _, _ in built["MoELoRA"][3])
    lora = statistics.median(times["LoRA r8"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tokens:.0f} tokens per step; "
          f"median (min-max) over {repeats} repeats of {STEPS} steps")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:42s} {m:7.1f} ms ({min(t):6.1f}-{max(t):6.1f})  {1000 * tokens / m:8,.0f} tok/s  "
              f"{lora / m:5.2f}x LoRA")

    # what MoELoRA adds to LoRA's step, op by op: self CPU time of the same batches, MoELoRA minus LoRA
    # (each op's least time over three alternating profiles, the one least disturbed by other work)
    ops = {"LoRA r8": {}, "MoELoRA": {}}
    for _ in range(3):
        for name in ops:
            with profile() as prof:
                run_steps(*built[name])
            for e in prof.key_averages():
                ops[name][e.key] = min(ops[name].get(e.key, (float("inf"), 0)), (e.self_cpu_time_total, e.count))
    print(f"\nop (self CPU per step)                      MoELoRA ms   LoRA ms   added ms  calls M / L")
    added = {k: ops["MoELoRA"].get(k, (0, 0))[0] - ops["LoRA r8"].get(k, (0, 0))[0]
             for k in set(ops["MoELoRA"]) | set(ops["LoRA r8"])}
    for k in sorted(added, key=added.get, reverse=True)[:20]:
        (m, mc), (lo, lc) = ops["MoELoRA"].get(k, (0, 0)), ops["LoRA r8"].get(k, (0, 0))
        print(f"{k[:42]:42s} {m / 1e3 / STEPS:10.2f} {lo / 1e3 / STEPS:9.2f} {added[k] / 1e3 / STEPS:10.2f}  "
              f"{mc // STEPS:5d} / {lc // STEPS}")
    total = {n: sum(t for t, _ in o.values()) / 1e3 / STEPS for n, o in ops.items()}
    print(f"{'all ops':42s} {total['MoELoRA']:10.2f} {total['LoRA r8']:9.2f} "
          f"{total['MoELoRA'] - total['LoRA r8']:10.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
