"""Where the demo's CPU fine-tuning step goes: step times of LoRA r8 and of MoELoRA (4 x r2, top-2, as
config/demo_finetune.toml), with and without the contrastive loss, then the ops MoELoRA adds to LoRA's step.

    python -m dev.profile_cpu_step [--init_from=out/demo/base/ckpt.pt] [--repeats=7] [--threads=2]

Needs the prepared data (python -m data.prepare) and a base checkpoint. Every variant runs the same batches
(train.py's Data, steps 0..9) through train.py's model building and train_step; variants alternate within
each repeat (a shared CPU is noisy), and the table prints the median ms per step and its spread. train.py's
own tok/s (its log) is the figure the README quotes; this is for finding where the time goes.
"""

import statistics
import time
from dataclasses import dataclass

import torch
from torch.profiler import profile

import cli
import train
from data.prepare import read_meta

STEPS = 10
VARIANTS = {  # name: train.py overrides on top of config/demo_finetune.toml
    "LoRA r8": ["--adapter.kind=lora", "--adapter.r=8", "--adapter.alpha=16"],
    "MoELoRA": [],
    "MoELoRA, contrastive none": ["--adapter.contrastive=none"],
}


@dataclass
class ProfileConfig:
    init_from: str = "out/demo/base/ckpt.pt"
    repeats: int = 7
    threads: int = 0  # 0: torch's default
    dtype: str = "float32"  # the demo fine-tunes in float32 on the CPU


def build(cfg, overrides):
    tcfg = cli.parse(train.TrainConfig, ["config/demo_finetune.toml", f"--init_from={cfg.init_from}",
                                         f"--dtype={cfg.dtype}", "--device=cpu", *overrides])
    data = train.Data(tcfg.data_dir, tcfg.mode, tcfg.seed)
    model, _ = train.build_model(tcfg, read_meta(tcfg.data_dir), None)
    data.block_size = model.config.block_size
    optimizer = model.configure_optimizers(tcfg.weight_decay, tcfg.lr, (tcfg.beta1, tcfg.beta2), "cpu")
    return tcfg, model, optimizer, data, train.setup_run(tcfg)


def run_steps(tcfg, model, optimizer, data, run):
    """ms per step over STEPS steps, as train.py takes them; and the tokens of those steps."""
    t0, tokens = time.perf_counter(), 0
    step_loss = train.TrainingLoss(model, tcfg.adapter, run.autocast)
    for step in range(STEPS):
        batches, n = train.step_batches(data, step, tcfg, run)
        train.eager_step(step_loss, model, optimizer, batches, tcfg.lr, tcfg, run)  # clipping and the update too
        tokens += n
    return 1000 * (time.perf_counter() - t0) / STEPS, tokens / STEPS


def main(argv=None):
    cfg = cli.parse(ProfileConfig, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    built = {name: build(cfg, overrides) for name, overrides in VARIANTS.items()}
    times, tokens = {name: [] for name in VARIANTS}, 0
    for rep in range(cfg.repeats + 1):  # the first round warms up
        for name in (list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]):
            ms, tokens = run_steps(*built[name])
            if rep > 0:
                times[name].append(ms)
    lora = statistics.median(times["LoRA r8"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tokens:.0f} tokens per step, {cfg.dtype}; "
          f"median (min-max) over {cfg.repeats} repeats of {STEPS} steps")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:28s} {m:7.1f} ms ({min(t):6.1f}-{max(t):6.1f})  {1000 * tokens / m:8,.0f} tok/s  "
              f"{lora / m:5.2f}x LoRA")

    # what MoELoRA adds to LoRA's step, op by op: self CPU time, MoELoRA minus LoRA, each op's least time
    # over three alternating profiles (the one least disturbed by other work)
    ops = {"LoRA r8": {}, "MoELoRA": {}}
    for _ in range(3):
        for name in ops:
            with profile() as prof:
                run_steps(*built[name])
            for e in prof.key_averages():
                ops[name][e.key] = min(ops[name].get(e.key, (float("inf"), 0)), (e.self_cpu_time_total, e.count))
    print("\nop (self CPU per step)                      MoELoRA ms   LoRA ms   added ms  calls M / L")
    added = {k: ops["MoELoRA"].get(k, (0, 0))[0] - ops["LoRA r8"].get(k, (0, 0))[0]
             for k in set(ops["MoELoRA"]) | set(ops["LoRA r8"])}
    for k in sorted(added, key=added.get, reverse=True)[:15]:
        (m, mc), (lo, lc) = ops["MoELoRA"].get(k, (0, 0)), ops["LoRA r8"].get(k, (0, 0))
        print(f"{k[:42]:42s} {m / 1e3 / STEPS:10.2f} {lo / 1e3 / STEPS:9.2f} {added[k] / 1e3 / STEPS:10.2f}  "
              f"{mc // STEPS:5d} / {lc // STEPS}")


if __name__ == "__main__":
    main()
