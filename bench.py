"""
Benchmarks: what MoELoRA costs against LoRA, one adapted layer at a time, in GPT-2 training, and in train.py.

    python bench.py                                  # every section on a CUDA GPU (about 6 minutes on an H200)
    python bench.py --quick=1                        # smoke run: small shapes, few repeats, a 2-layer model
    python bench.py --sections=layer,whole --json=out/bench.json
    python bench.py --sections=compiled              # the end-to-end section under torch.compile (slow to compile)
    python bench.py --sections=train --train_runs=compile   # only the train.py runs whose name contains "compile"

Sections (--sections, comma-separated; default layer,whole,e2e,compiled,train):
  layer     the op: one frozen nn.Linear plus its adapter (bf16, E=8 experts of rank r=8, top-2 routing,
            d_in = d_out = d), forward, backward and both, for
              loop     a Python loop over experts (select each expert's tokens, compute, index_add), as MoE-LoRA
                       trainers write it
              ref      the dense-masked PyTorch reference (moelora.moelora_ref)
              lora64   plain LoRA of rank 64 (the same parameter count) in eager PyTorch
              kernel   our CUDA kernel (moelora.moelora(..., impl="cuda"))
              klora64  our kernel as plain LoRA (E=1, r=64)
              fused    our kernel with the frozen layer in one op (kernel.moelora_linear_cuda): the kernel adds its
                       output into the frozen layer's, and its dx into the frozen layer's dx
              base     the frozen layer alone
            "path" is a variant's forward+backward minus the frozen layer's, in the same run. Its floor is 14*N*d
            bytes (bf16) moved at the copy bandwidth measured in this run (never a datasheet number): the adapter
            reads x and the frozen layer's output and writes y (3 passes), and in the backward reads dy and x and
            the frozen layer's dx and writes dx (4 passes); 7 passes of N*d bf16 values.
  whole     the whole adapted layer as training runs it: moelora.LoRALinear r64 against moelora.MoELoRALinear
            (8 x r8, top-2, router, dropout 0.05, balance and contrastive losses with their coefficients), the
            auxiliary losses collected and added to the loss as train.py does; path = layer minus frozen layer.
  e2e       a GPT-2-124M-shaped model (random init) with adapters on attn.c_attn, attn.c_proj, mlp.c_fc and
            mlp.c_proj, bf16 autocast, train.py's step (train.train_step: AdamW on the adapters, clipping), every
            step synchronised: training tokens/s for LoRA r=16, MoELoRA with the kernel (8 experts of rank 2,
            top-2: equal parameters), MoELoRA on the reference path, and without the contrastive loss; batch 8
            and 32 x 1024; eager, and the step as a CUDA graph (train.GraphedStep, train.py's --cuda_graph).
  compiled  LoRA and MoELoRA (kernel, reference) with the step's loss (train.TrainingLoss: the model and its
            auxiliary losses) under torch.compile, as train.py's --compile, without and with the CUDA graph.
  train     train.py itself fine-tuning on the bundled tasks (tokens/s from its log, the first interval dropped;
            tokens are example tokens, padding not counted), eager, with --cuda_graph=True, and for GPT-2-small's
            LoRA and MoELoRA also with --compile=True (the model and its auxiliary losses compiled together):
            the demo's size (4 x 128, LoRA r8 against MoELoRA 4 x r2 top-2) and GPT-2-small's shape (12 x 768,
            batch 64, LoRA r16 against MoELoRA 8 x r2 top-2, contrastive "expert", "comoe" and "none"), random
            base weights (speed does not depend on them); the adapters' impl is train.py's default, "auto".
Times are medians of CUDA-event-timed runs after warm-up, rotating between input sets that together exceed the
L2 cache; ratios are against baselines measured in the same run.
"""

import dataclasses
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

import cli
import kernel
import moelora
from model import GPT, GPTConfig


@dataclass
class BenchConfig:
    sections: tuple = ("layer", "whole", "e2e", "compiled", "train")
    quick: bool = False  # small shapes, few repeats
    json: str = ""  # also write every figure to this file
    batches: tuple = (8, 32)  # the end-to-end sections' batch sizes (x 1024 tokens)
    configs: tuple = ()  # the end-to-end sections' configs by name (default: each section's own list)
    train_runs: str = ""  # the train section: only the runs whose name contains this text (default: all)

E, R_EXPERT, TOP_K, R_LORA = 8, 8, 2, 64  # the layer section's adapters: 8 x rank 8 against rank 64
SCALING = 2.0


# ----------------------------------------------------------------------------------------------------
# timing

def time_us(fn, n_sets, warmup, reps):
    """Median CUDA-event time of fn(i) in microseconds; fn(i) uses input set i % n_sets."""
    for i in range(warmup):
        fn(i % n_sets)
    torch.cuda.synchronize()
    events = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n_sets)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def copy_bandwidth_gbs(reps):
    """Device-to-device copy of 1 GiB, bytes read plus bytes written, in GB/s."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_us(lambda i: b.copy_(a), 1, 3, reps)
    return 2 * a.numel() / us / 1e3


# ----------------------------------------------------------------------------------------------------
# the layer section

def moe_loop(x, A, B, gates, scaling):
    """MoELoRA as a Python loop over experts: per expert, gather its tokens, compute, index_add back."""
    y = torch.zeros(x.shape[0], B.shape[1], dtype=x.dtype, device=x.device)
    for e in range(A.shape[0]):
        idx = gates[:, e].nonzero().squeeze(1)  # (n_e,) this expert's tokens; syncs with the host
        if idx.numel() == 0:
            continue
        h = x[idx] @ A[e].T  # (n_e, r)
        y = y.index_add(0, idx, (h @ B[e].T) * (scaling * gates[idx, e, None]))  # (N, d_out)
    return y


def layer_variants(d, dtype, gen, base):
    """{name: (layer(x, gates) -> y, parameters to differentiate, uses gates)}."""
    def param(*shape, std):
        return (torch.randn(*shape, device="cuda", generator=gen) * std).to(dtype).requires_grad_()
    A, B = param(E, R_EXPERT, d, std=d ** -0.5), param(E, d, R_EXPERT, std=R_EXPERT ** -0.5)
    A64, B64 = param(R_LORA, d, std=d ** -0.5), param(d, R_LORA, std=R_LORA ** -0.5)
    ones = {}

    def kernel_lora(x, g):
        n = x.shape[0]
        if n not in ones:
            ones[n] = torch.ones(n, 1, device="cuda", dtype=dtype)
        return moelora.moelora(x, A64[None], B64[None], ones[n], SCALING, impl="cuda")

    return {
        "loop": (lambda x, g: base(x) + moe_loop(x, A, B, g, SCALING), [A, B], True),
        "ref": (lambda x, g: base(x) + moelora.moelora_ref(x, A, B, g, SCALING), [A, B], True),
        "lora64": (lambda x, g: base(x) + SCALING * ((x @ A64.T) @ B64.T), [A64, B64], False),
        "kernel": (lambda x, g: base(x) + moelora.moelora(x, A, B, g, SCALING, impl="cuda"), [A, B], True),
        "klora64": (lambda x, g: base(x) + kernel_lora(x, g), [A64, B64], False),
        "fused": (lambda x, g: kernel.moelora_linear_cuda(x, base.weight, base.bias, A, B, g, SCALING), [A, B], True),
        "base": (lambda x, g: base(x), [], False),
    }


def bench_layer(d, N, quick, bw):
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(d + N)
    base = torch.nn.Linear(d, d, device="cuda", dtype=dtype).requires_grad_(False)
    n_sets = max(2, min(4, -(-200 * 2**20 // (4 * N * d))))  # x and dy of all sets exceed 4x the L2
    sets = []
    for _ in range(n_sets):
        x = torch.randn(N, d, device="cuda", generator=gen).to(dtype).requires_grad_()
        dy = torch.randn(N, d, device="cuda", generator=gen).to(dtype)
        top = torch.randn(N, E, device="cuda", generator=gen).topk(TOP_K, -1)
        gates = torch.zeros(N, E, device="cuda").scatter(1, top.indices, top.values.softmax(-1))
        sets.append((x, dy, gates.to(dtype).requires_grad_()))
    warmup, reps = (2, 5) if quick else (3, 20)
    rows = {}
    for name, (layer, params, uses_gates) in layer_variants(d, dtype, gen, base).items():
        def forward(i):
            x, dy, g = sets[i]
            return layer(x, g), dy, [x] + params + ([g] if uses_gates else [])

        def both(i):
            y, dy, wrt = forward(i)
            torch.autograd.grad(y, wrt, dy)

        fwd_us = time_us(forward, n_sets, warmup, reps)  # the forward alone (its graph is dropped)
        both_us = time_us(both, n_sets, warmup, reps)
        # the backward alone: events around autograd.grad of a forward queued (untimed) just before
        events = []
        for i in range(warmup + reps):
            y, dy, wrt = forward(i % n_sets)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.autograd.grad(y, wrt, dy)
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        bwd_us = statistics.median(s.elapsed_time(e) for s, e in events[warmup:]) * 1e3
        rows[name] = {"fwd_us": fwd_us, "bwd_us": bwd_us, "both_us": both_us}
    floor_us = 14 * N * d / bw / 1e3
    for name, row in rows.items():
        row["path_us"] = row["both_us"] - rows["base"]["both_us"]
        row["pct_of_floor"] = 100 * floor_us / row["path_us"] if name != "base" and row["path_us"] > 0 else None
        row["path_gbs"] = 14 * N * d / row["path_us"] / 1e3 if name != "base" and row["path_us"] > 0 else None
    return {"d": d, "N": N, "floor_us": floor_us, "rows": rows}


def print_layer(res):
    print(f"\nd={res['d']}  N={res['N']}  (bf16, E={E}, r={R_EXPERT}, top-{TOP_K}; LoRA r={R_LORA}); "
          f"path floor 14*N*d bytes = {res['floor_us']:.1f} us")
    print(f"{'variant':9s} {'fwd us':>9s} {'bwd us':>9s} {'fwd+bwd':>9s} {'path us':>9s} {'path GB/s':>10s} "
          f"{'% floor':>8s}")
    for name, r in res["rows"].items():
        gbs = f"{r['path_gbs']:10.0f}" if r["path_gbs"] else f"{'':>10s}"
        pct = f"{r['pct_of_floor']:7.0f}%" if r["pct_of_floor"] else f"{'':>8s}"
        print(f"{name:9s} {r['fwd_us']:9.1f} {r['bwd_us']:9.1f} {r['both_us']:9.1f} {r['path_us']:9.1f} {gbs} {pct}")


def layer_targets(results):
    """The issue's targets, each with its figure: [(text, value, met)]."""
    out = []
    largest = sorted(results, key=lambda r: r["N"] * r["d"])[1:]  # the three largest shapes
    for res in results:
        p = {k: v["path_us"] for k, v in res["rows"].items()}
        tag = f"d={res['d']} N={res['N']}"
        out.append((f"{tag}: path(kernel) / path(eager LoRA r64) <= 1", p["kernel"] / p["lora64"],
                    p["kernel"] <= p["lora64"]))
        out.append((f"{tag}: path(kernel) / path(kernel as LoRA r64) <= 1.15", p["kernel"] / p["klora64"],
                    p["kernel"] <= 1.15 * p["klora64"]))
        need = 20 if res["N"] <= 16384 else 10
        out.append((f"{tag}: path(loop) / path(kernel) >= {need}", p["loop"] / p["kernel"],
                    p["loop"] >= need * p["kernel"]))
        if res in largest:
            for v in ("kernel", "fused"):
                pct = res["rows"][v]["pct_of_floor"]
                out.append((f"{tag}: path({v}) at >= 60% of the 14*N*d floor (%)", pct, pct >= 60))
        out.append((f"{tag}: path(fused) / path(eager LoRA r64) <= 1", p["fused"] / p["lora64"],
                    p["fused"] <= p["lora64"]))
    return out


# ----------------------------------------------------------------------------------------------------
# the whole-layer section: LoRALinear against MoELoRALinear, router and auxiliary losses included

def bench_whole(d, N, quick):
    """Forward + backward (ms) of the frozen layer alone, LoRALinear r64 and MoELoRALinear 8 x r8 top-2 in
    training mode, each with its auxiliary losses added to the loss as train.py adds them."""
    torch.manual_seed(d + N)
    base = torch.nn.Linear(d, d, device="cuda").requires_grad_(False)
    lora_cfg = moelora.AdapterConfig(kind="lora", r=R_LORA, alpha=SCALING * R_LORA)
    layers = {"base": (base, None),
              "LoRALinear r64": (moelora.LoRALinear(base, R_LORA, SCALING * R_LORA, lora_cfg.dropout), lora_cfg)}
    for variant in ("expert", "none"):
        cfg = moelora.AdapterConfig(kind="moelora", r=R_EXPERT, alpha=SCALING * R_EXPERT, n_experts=E, top_k=TOP_K,
                                    contrastive=variant, impl="cuda")
        layer = moelora.MoELoRALinear(base, E, TOP_K, R_EXPERT, cfg.alpha, cfg.dropout, contrastive=variant,
                                      impl="cuda").cuda()
        layers[f"MoELoRALinear, contrastive {variant}"] = (layer, cfg)
    n_sets = max(2, min(4, -(-200 * 2**20 // (4 * N * d))))
    gen = torch.Generator(device="cuda").manual_seed(1)
    sets = [(torch.randn(N, d, device="cuda", generator=gen).requires_grad_(),
             torch.randn(N, d, device="cuda", generator=gen)) for _ in range(n_sets)]
    warmup, reps = (2, 5) if quick else (3, 20)
    rows = {}
    for name, (layer, cfg) in layers.items():
        layer.train()
        params = [p for p in layer.parameters() if p.requires_grad]

        def step(i):
            x, dy = sets[i]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = (layer(x) * dy).sum()
                if cfg is not None:
                    loss = loss + moelora.auxiliary_loss(moelora.collect_aux(layer), cfg)
            torch.autograd.grad(loss, [x] + params)

        rows[name] = {"both_us": time_us(step, n_sets, warmup, reps)}
    for row in rows.values():
        row["path_us"] = row["both_us"] - rows["base"]["both_us"]
    return {"d": d, "N": N, "rows": rows}


def print_whole(res):
    print(f"\nd={res['d']}  N={res['N']}  (bf16 autocast, training mode, auxiliary losses in the loss)")
    lora = res["rows"]["LoRALinear r64"]["path_us"]
    for name, r in res["rows"].items():
        ratio = f"{r['path_us'] / lora:6.2f}x LoRA" if name != "base" else ""
        print(f"  {name:34s} fwd+bwd {r['both_us']:8.1f} us   path {r['path_us']:8.1f} us  {ratio}")


def whole_targets(results):
    out = []
    for res in results:
        p = {k: v["path_us"] for k, v in res["rows"].items()}
        ratio = p["MoELoRALinear, contrastive expert"] / p["LoRALinear r64"]
        out.append((f"d={res['d']} N={res['N']}: whole MoELoRALinear path / LoRALinear r64 path <= 1.1", ratio,
                    ratio <= 1.1))
    return out


# ----------------------------------------------------------------------------------------------------
# the end-to-end section

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def e2e_configs():
    lora = moelora.AdapterConfig(kind="lora", r=16, alpha=32.0, targets=TARGETS)
    moe = moelora.equal_params_moelora(lora, n_experts=8, top_k=2)  # 8 experts of rank 2
    moe_ref = moelora.AdapterConfig(**{**moe.__dict__, "impl": "ref"})
    moe_cuda = moelora.AdapterConfig(**{**moe.__dict__, "impl": "cuda"})
    moe_cuda_nocon = moelora.AdapterConfig(**{**moe.__dict__, "impl": "cuda", "contrastive": "none"})
    return {"LoRA r16": lora, "MoELoRA kernel": moe_cuda, "MoELoRA reference": moe_ref,
            "MoELoRA kernel, no contrastive": moe_cuda_nocon}


E2E_MODES = {"e2e": ("eager", "graph"), "compiled": ("compile", "compile+graph")}


def bench_e2e(name, cfg, batch, quick, mode="eager"):
    """ms per step of train.py's own training step (train.train_step: forward, backward, clipping, fused
    AdamW) on a GPT-2-124M-shaped model; mode: "eager", "graph" (train.GraphedStep: the step as a CUDA graph),
    "compile" (train.TrainingLoss, the model with its auxiliary losses, under torch.compile) or
    "compile+graph"."""
    import train  # a script, imported only here
    torch.manual_seed(0)
    gcfg = GPTConfig(n_layer=2) if quick else GPTConfig()
    model = GPT(gcfg).cuda()
    moelora.inject(model, cfg)
    moelora.mark_only_adapters_trainable(model)
    graphed = mode.endswith("graph")
    tcfg = train.TrainConfig(init_from="bench", adapter=cfg, cuda_graph=graphed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphed)
    run = train.Run(ddp=False, rank=0, world=1, device="cuda", device_type="cuda", dtype="bfloat16",
                    autocast=autocast, accum=1)
    # compiled: the model and its auxiliary losses (train.TrainingLoss) together, so that the many small ops
    # of routing and the losses fuse into few kernels
    step_loss = train.TrainingLoss(model, cfg, autocast)
    step_loss = torch.compile(step_loss) if mode.startswith("compile") else step_loss
    opt = model.configure_optimizers(0.0, 1e-4, (0.9, 0.99), "cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    idx = torch.randint(0, gcfg.vocab_size, (batch, gcfg.block_size + 1), device="cuda", generator=gen)
    inputs = [idx[:, :-1].contiguous(), idx[:, 1:].contiguous(), torch.ones(batch, gcfg.block_size, device="cuda")]
    if graphed:
        graph_step = train.GraphedStep(step_loss, model, opt, tcfg, run)
        step = lambda: graph_step(inputs, 1e-4)  # noqa: E731
    else:
        step = lambda: train.eager_step(step_loss, model, opt, [inputs], 1e-4, tcfg, run)  # noqa: E731

    warmup, reps = (train.GraphedStep.WARMUP + 1, 3) if quick else (train.GraphedStep.WARMUP + 2, 10)
    times = []
    for i in range(warmup + reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    counts = moelora.count_parameters(model)
    del model, step_loss, opt, step
    torch.cuda.empty_cache()
    step_s = statistics.median(times[warmup:])
    return {"config": name, "batch": batch, "seq": gcfg.block_size, "mode": mode,
            "first_step_s": times[0], "step_ms": step_s * 1e3,
            "tokens_per_s": batch * gcfg.block_size / step_s, "adapter_params": counts["adapter"],
            "router_params": counts["router"]}


# ----------------------------------------------------------------------------------------------------

def print_e2e(r):
    print(f"  batch {r['batch']:2d}x{r['seq']}  {r['config'] + ', ' + r['mode']:46s} {r['step_ms']:8.1f} ms/step "
          f"{r['tokens_per_s']:10.0f} tok/s" + (f"   (first step, compiling: {r['first_step_s']:.0f} s)"
                                               if r["mode"].startswith("compile") else
                                               f"   (adapter params {r['adapter_params']:,}, router {r['router_params']:,})"))


def e2e_targets(rows, names):
    """Each MoELoRA config >= 0.90x LoRA r16's tokens/s, per batch and mode (the configs run beside LoRA r16)."""
    out = []
    for batch, mode in sorted({(r["batch"], r["mode"]) for r in rows}):
        tps = {r["config"]: r["tokens_per_s"] for r in rows if (r["batch"], r["mode"]) == (batch, mode)}
        for name in names:
            if name != "LoRA r16" and name in tps and "LoRA r16" in tps:
                ratio = tps[name] / tps["LoRA r16"]
                out.append((f"batch {batch}, {mode}: tokens/s {name} / LoRA r16 >= 0.90", ratio, ratio >= 0.90))
    return out


# ----------------------------------------------------------------------------------------------------
# the train.py section: the training script itself, at the demo's size and at GPT-2-small's shape

TRAIN_RUNS = {  # name: (model, adapter overrides)
    "demo, LoRA r8": ("demo", ["--adapter.kind=lora", "--adapter.r=8", "--adapter.alpha=16"]),
    "demo, MoELoRA 4 x r2": ("demo", []),
    "demo, MoELoRA, contrastive none": ("demo", ["--adapter.contrastive=none"]),
    "gpt2, LoRA r16": ("gpt2", ["--adapter.kind=lora", "--adapter.r=16", "--adapter.alpha=32"]),
    "gpt2, MoELoRA 8 x r2": ("gpt2", ["--adapter.n_experts=8"]),
    "gpt2, MoELoRA, contrastive comoe": ("gpt2", ["--adapter.n_experts=8", "--adapter.contrastive=comoe"]),
    "gpt2, MoELoRA, contrastive none": ("gpt2", ["--adapter.n_experts=8", "--adapter.contrastive=none"]),
}
TRAIN_RUNS.update({f"{name}, cuda_graph": (size, [*overrides, "--cuda_graph=True"])
                   for name, (size, overrides) in list(TRAIN_RUNS.items())})
TRAIN_RUNS.update({f"{name}, compile": ("gpt2", [*TRAIN_RUNS[name][1], "--compile=True"])  # fixed shapes only
                   for name in ("gpt2, LoRA r16, cuda_graph", "gpt2, MoELoRA 8 x r2, cuda_graph")})
TRAIN_MODELS = {"demo": ["--n_layer=4", "--n_head=4", "--n_embd=128", "--batch_size=16"],
                "gpt2": ["--n_layer=12", "--n_head=12", "--n_embd=768", "--batch_size=64"]}


def train_setup(quick, work, device="cuda"):
    """The bundled tasks and a random base of each TRAIN_MODELS size under work (one pretraining step saves the
    shape); returns the arguments every train_run shares."""
    import train  # a script, imported only here
    from data.prepare import ensure
    data_dir = os.path.join(work, "data")
    ensure(data_dir, seed=0, scale=0.1 if quick else 1.0)
    common = [f"--data_dir={data_dir}", f"--device={device}", "--dtype=bfloat16", "--block_size=192", "--eval_iters=1"]
    for size, model_args in TRAIN_MODELS.items():
        train.main(["--mode=pretrain", f"--out_dir={work}/base_{size}", "--max_iters=1", "--warmup_iters=1",
                    *common, *model_args])
    return common


def train_run(name, size, overrides, iters, log_every, work, common):
    """train.py fine-tuning the size's base for iters steps with the adapter overrides; returns its row."""
    import train
    out = f"{work}/{name.replace(', ', '_').replace(' ', '_')}"
    train.main(["--mode=finetune", f"--init_from={work}/base_{size}/ckpt.pt", f"--out_dir={out}",
                f"--max_iters={iters}", f"--log_interval={log_every}", f"--eval_interval={iters}",
                "--adapter.targets=attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj", "--adapter.r=2",
                "--adapter.alpha=4", "--adapter.n_experts=4", *common, *TRAIN_MODELS[size], *overrides])
    with open(f"{out}/log.jsonl") as f:
        speeds = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r][1:]  # warm-up dropped
    return {"run": name, "model": size, "tokens_per_s": statistics.median(speeds), "spread": [min(speeds), max(speeds)]}


def bench_train(quick, work, device="cuda", only=""):
    """tokens/s of train.py fine-tuning each TRAIN_RUNS entry (those whose name contains only) on the bundled
    tasks (bf16). A run that fails (a non-finite loss, say) is reported with its error and the section goes on:
    its targets read as missed."""
    common = train_setup(quick, work, device)
    iters, log_every = (20, 5) if quick else (60, 10)
    rows = []
    for name, (size, overrides) in TRAIN_RUNS.items():
        if only not in name:
            continue
        try:
            rows.append(train_run(name, size, overrides, iters, log_every, work, common))
        except (FloatingPointError, RuntimeError, cli.ConfigError) as e:  # a refused setting too
            print(f"  {name}: failed: {type(e).__name__}: {e}")
            rows.append({"run": name, "model": size, "tokens_per_s": float("nan"), "spread": [float("nan")] * 2,
                         "error": f"{type(e).__name__}: {e}"})
    return rows


def train_targets(rows):
    tps = {r["run"]: r["tokens_per_s"] for r in rows}
    pairs = [("demo, MoELoRA 4 x r2", "demo, LoRA r8", 0.80), ("gpt2, MoELoRA 8 x r2", "gpt2, LoRA r16", 0.90),
             ("gpt2, MoELoRA, contrastive comoe", "gpt2, LoRA r16", 0.85)]
    pairs += [(f"{a}, cuda_graph", f"{b}, cuda_graph", need) for a, b, need in pairs]
    pairs.append(("gpt2, MoELoRA 8 x r2, cuda_graph, compile", "gpt2, LoRA r16, cuda_graph, compile", 0.90))
    return [(f"train.py tokens/s {a} / {b} >= {need:.2f}", tps[a] / tps[b], tps[a] / tps[b] >= need)
            for a, b, need in pairs if a in tps and b in tps]  # a failed run's NaN ratio is never >= need: missed


# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    cfg = cli.parse(BenchConfig, argv)
    unknown = set(cfg.sections) - {"layer", "whole", "e2e", "compiled", "train"}
    if unknown:
        raise cli.ConfigError(f"unknown sections {sorted(unknown)}; known: layer, whole, e2e, compiled, train")
    if not any(cfg.train_runs in name for name in TRAIN_RUNS):
        raise cli.ConfigError(f"no train.py run's name contains {cfg.train_runs!r}; the runs: {', '.join(TRAIN_RUNS)}")
    if not torch.cuda.is_available():
        raise SystemExit("bench.py needs a CUDA GPU")
    quick = cfg.quick
    kernel.load_kernel()  # build first, so that no timing includes it
    torch.backends.cuda.enable_cudnn_sdp(False)  # attention as train.py runs it (train.setup_run says why)
    bw = copy_bandwidth_gbs(5 if quick else 20)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_gbs": bw, "quick": quick}
    print(f"{info['device']}, torch {info['torch']}; measured copy bandwidth {bw:.0f} GB/s (read + write)")
    results, targets = {"info": info}, []

    shapes = [(768, 4096), (768, 8192), (4096, 4096), (4096, 8192)] if quick else \
             [(768, 16384), (768, 65536), (4096, 16384), (4096, 65536)]
    if "layer" in cfg.sections:
        print("\n== one adapted layer: the op ==")
        results["layer"] = [bench_layer(d, N, quick, bw) for d, N in shapes]
        for res in results["layer"]:
            print_layer(res)
        targets += layer_targets(results["layer"])
    if "whole" in cfg.sections:
        print("\n== one adapted layer, whole: LoRALinear r64 against MoELoRALinear 8 x r8 ==")
        results["whole"] = [bench_whole(d, N, quick) for d, N in shapes]
        for res in results["whole"]:
            print_whole(res)
        targets += whole_targets(results["whole"])
    batches = [2, 4] if quick else [int(b) for b in cfg.batches]
    for section, modes in E2E_MODES.items():
        if section not in cfg.sections:
            continue
        print(f"\n== end to end ({', '.join(modes)}): GPT-2 124M shape, adapters on c_attn, c_proj, c_fc, mlp.c_proj, "
              f"bf16 autocast, train.py's step ==")
        configs = e2e_configs()
        names = list(configs) if section == "e2e" else ["LoRA r16", "MoELoRA kernel", "MoELoRA reference"]
        names = [n for n in names if n in cfg.configs] if cfg.configs else names
        rows = []
        for mode in modes:
            for batch in batches:
                for name in names:
                    rows.append(bench_e2e(name, configs[name], batch, quick, mode=mode))
                    print_e2e(rows[-1])
        results[section] = rows
        targets += e2e_targets(rows, names)
    if "train" in cfg.sections:
        print("\n== train.py fine-tuning on the bundled tasks ==")
        with tempfile.TemporaryDirectory() as work:
            results["train"] = bench_train(quick, work, only=cfg.train_runs)
        for r in results["train"]:
            print(f"  {r['run']:36s} " + (f"failed ({r['error']})" if "error" in r else
                  f"{r['tokens_per_s']:10.0f} tok/s  (intervals {r['spread'][0]:,.0f}-{r['spread'][1]:,.0f})"))
        targets += train_targets(results["train"])

    print("\ntargets:")
    for text, value, met in targets:
        print(f"  {'met   ' if met else 'MISSED'}  {text}: {value:.2f}")
    results["targets"] = [{"target": t, "value": v, "met": m} for t, v, m in targets]
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {cfg.json}")


if __name__ == "__main__":
    try:
        main()
    except cli.ConfigError as e:
        raise SystemExit(f"error: {e}")
