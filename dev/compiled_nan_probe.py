"""Why train.py --compile --cuda_graph with MoELoRA at GPT-2-small's shape saw a NaN gradient norm at step 1
(dev/runs/h200-2026-12-02i/): train.TrainingLoss under torch.compile (inductor) on the GPU, bench.py's train
settings (8 x r2 top-2, dropout 0.05, all four linears, batch 64 x 192 with padding). First train.py itself
(bench.py's train_run, a few steps); then three steps of train.train_step from the adapters' init, printing per
step the logged values and the parameters whose gradient is not finite, with variants (no contrastive loss, no
dropout) where the plain step shows the NaN.

    python -m dev.compiled_nan_probe        # on a CUDA GPU
"""

import sys

import torch

import moelora
import train
from model import GPT, GPTConfig


def probe(n_layer, contrastive, steps=3, **adapter):
    cfg = moelora.AdapterConfig(kind="moelora", r=2, alpha=4.0, n_experts=8, top_k=2, contrastive=contrastive,
                                targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), **adapter)
    torch.manual_seed(0)
    gpt = moelora.mark_only_adapters_trainable(moelora.inject(GPT(GPTConfig(n_layer=n_layer, block_size=192)), cfg))
    gpt.cuda().train()
    tcfg = train.TrainConfig(init_from="probe", adapter=cfg)
    run = train.Run(False, 0, 1, "cuda", "cuda", "bfloat16", torch.autocast("cuda", dtype=torch.bfloat16), 1)
    opt = gpt.configure_optimizers(0.0, 1e-3, (0.9, 0.99), "cuda")
    step_loss = torch.compile(train.TrainingLoss(gpt, cfg, run.autocast))
    for i in range(steps):
        idx = torch.randint(0, 50257, (64, 193), device="cuda")
        mask = torch.ones(64, 192, device="cuda")
        mask[:, 120:] = 0  # padding, as a fine-tuning batch has
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (i + 1) / 50
        values = train.train_step(step_loss, gpt, opt, [(idx[:, :-1], idx[:, 1:], mask)], tcfg, run)
        bad = [n for n, p in gpt.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        nonfinite_w = [n for n, p in gpt.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        print(f"  layers {n_layer} contrastive {contrastive} {adapter} step {i}: "
              f"{[round(v, 4) for v in values.tolist()]}; non-finite grads {len(bad)} {bad[:4]}; "
              f"non-finite weights {len(nonfinite_w)}", flush=True)
        opt.zero_grad(set_to_none=True)
        if bad or not torch.isfinite(values).all():
            return False
    return True


def train_py(work):
    """train.py itself as bench.py's train section runs it (gpt2 shape, MoELoRA 8 x r2), a few steps, with
    --compile and --cuda_graph as the failing row had them; if that fails, --compile alone, and without dropout."""
    import bench
    common = bench.train_setup(True, work)
    for name, extra in [("compile+graph", ["--compile=True", "--cuda_graph=True"]), ("compile", ["--compile=True"]),
                        ("compile, dropout 0", ["--compile=True", "--adapter.dropout=0"])]:
        try:
            row = bench.train_run(f"probe {name}", "gpt2", ["--adapter.n_experts=8", *extra], 8, 1, work, common)
            print(f"  train.py {name}: {row['tokens_per_s']:.0f} tok/s, finite")
            return True
        except Exception as e:  # noqa: BLE001 — a probe: report and go on
            print(f"  train.py {name}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    import tempfile
    torch.backends.cuda.enable_cudnn_sdp(False)
    with tempfile.TemporaryDirectory() as work:
        if train_py(work):
            sys.exit(0)
    # the step alone: the variants only where the plain one shows the NaN
    for n_layer, contrastive, adapter in [(2, "expert", {}), (12, "expert", {}), (12, "none", {}),
                                          (12, "expert", {"dropout": 0.0})]:
        try:
            if probe(n_layer, contrastive, **adapter) and n_layer == 12:
                break
        except Exception as e:  # noqa: BLE001 — a probe: report and go on
            print(f"  layers {n_layer} {contrastive}: {type(e).__name__}: {e}", file=sys.stderr)
