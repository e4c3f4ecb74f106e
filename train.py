"""
Train a GPT: pretrain a base (all parameters) on the corpus, or fine-tune it on the tasks with LoRA,
MoELoRA or all parameters. One readable loop, nanoGPT-style.

    python -m data.prepare                                   # once: corpus, tasks, tokenizer -> out/data
    python train.py config/demo_pretrain.toml                # base model -> out/demo/base/ckpt.pt
    python train.py config/demo_finetune.toml                # MoELoRA adapters -> out/demo/moelora/ckpt.pt
    python train.py config/demo_finetune.toml --adapter.kind=lora --adapter.r=8 --out_dir=out/demo/lora
    torchrun --standalone --nproc_per_node=2 train.py ...    # DDP: NCCL on GPUs, gloo on CPUs

Settings: the TrainConfig dataclass below; presets in config/*.toml; --key=value overrides; --help lists
them all. init_from: "scratch" (pretraining), a checkpoint of ours (ckpt.pt), a Hugging Face GPT-2
directory or name, or "resume" (continue the run in out_dir exactly where it stopped).

Checkpoints (out_dir/ckpt.pt) are written atomically: a crash or a kill mid-save leaves the last good one in
place, and weights that are not finite are never saved. Ctrl-C finishes the step in flight, saves and stops,
so that init_from=resume continues exactly. A fine-tuning checkpoint holds the adapters only and names its base
(path and fingerprint). One run at a time per out_dir (out_dir/train.lock), and a new run never writes over a
checkpoint. Every setting is checked before any work; an expected error is one line "error: ..." (cli.run).
"""

import functools
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import cli
import evaluate
import moelora
from data.prepare import read_meta
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # what to do
    mode: str = "finetune"  # "pretrain" (corpus, all parameters) | "finetune" (tasks)
    init_from: str = "scratch"  # "scratch" | path to ckpt.pt | Hugging Face dir or name | "resume"
    data_dir: str = "out/data"
    out_dir: str = "out/run"
    # model, when pretraining from scratch
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    dropout: float = 0.0
    # fine-tuning: the adapters and their loss coefficients (--adapter.kind=lora, [adapter] in a preset);
    # adapter.kind = "none" fine-tunes all parameters
    adapter: moelora.AdapterConfig = field(default_factory=moelora.AdapterConfig)
    # optimisation
    batch_size: int = 16  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per step, over all processes together
    max_iters: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 50
    lr_decay_iters: int = 0  # the cosine reaches min_lr here (0: at max_iters)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: off
    train_on_inputs: bool = False  # fine-tuning: the loss counts prompt tokens too (needs data prepared so)
    # logging, evaluation, checkpoints
    log_interval: int = 10
    eval_interval: int = 200  # validation loss and a checkpoint every this many steps
    eval_iters: int = 20  # validation batches
    eval_items: int = 0  # fine-tuning: test items per task to score at each evaluation (0: none)
    # system
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    dtype: str = "auto"  # "auto" (bfloat16 on CUDA, else float32) | "float32" | "bfloat16"
    compile: bool = False
    # capture the training step as a CUDA graph and replay it (GraphedStep): the host stops paying for each of
    # the step's many small launches. Needs device=cuda, one process and one micro-batch; fine-tuning batches
    # are then padded to block_size (one fixed shape)
    cuda_graph: bool = False
    seed: int = 1337
    base: str = ""  # init_from=resume: the base an adapter run was trained on, where it moved (default: as saved)

    def __post_init__(self):
        # every setting's allowed values; cli.parse turns the error into one line naming the settings
        cli.check(self, {
            "mode": cli.one_of("pretrain", "finetune"), "init_from": cli.matching(".+", "a non-empty string"),
            "data_dir": cli.matching(".+", "a directory"), "out_dir": cli.matching(".+", "a directory"),
            "n_layer": cli.at_least(1), "n_head": cli.at_least(1), "n_embd": cli.at_least(1),
            "block_size": cli.at_least(2), "dropout": cli.fraction(),
            "batch_size": cli.at_least(1), "grad_accum": cli.at_least(1), "max_iters": cli.at_least(1),
            "lr": cli.above(0), "min_lr": cli.at_least(0), "warmup_iters": cli.at_least(0),
            "lr_decay_iters": cli.at_least(0), "weight_decay": cli.at_least(0), "beta1": cli.fraction(),
            "beta2": cli.fraction(), "grad_clip": cli.at_least(0), "log_interval": cli.at_least(1),
            "eval_interval": cli.at_least(1), "eval_iters": cli.at_least(1), "eval_items": cli.at_least(0),
            "device": cli.matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
            "dtype": cli.one_of("auto", "float32", "bfloat16"), "seed": cli.between(0, 2 ** 32 - 1),
        }, combinations=[
            (lambda c: c.n_embd % c.n_head == 0, f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}"),
            (lambda c: c.min_lr <= c.lr, f"min_lr={self.min_lr} must not exceed lr={self.lr}"),
            (lambda c: c.mode == "pretrain" or c.init_from != "scratch", "fine-tuning needs a base: set init_from "
             "to a checkpoint (e.g. out/demo/base/ckpt.pt) or a Hugging Face GPT-2 directory"),
        ])

    @property
    def uses_adapters(self):
        return self.mode == "finetune" and self.adapter.kind != "none"


# Settings a run would accept and then not use: (when, the settings, why), checked against those the command
# line and presets set (cli.given), so that a default never trips them. The model's shape (SHAPE) is the base's
# when it starts from one: build_model refuses a shape setting that differs from it.
SHAPE = ("n_layer", "n_head", "n_embd", "block_size")
UNUSED_SETTINGS = [
    (lambda c: c.mode == "pretrain", ("adapter.", "eval_items", "train_on_inputs"),
     "they apply to mode=finetune; pretraining trains every parameter on the corpus"),
    (lambda c: c.init_from != "resume", ("base",), "it names a moved base for init_from=resume"),
]
# Settings a resumed run keeps: the weights and the data they were trained on depend on them
FIXED_ON_RESUME = ("mode", *SHAPE, "train_on_inputs", "adapter.kind", "adapter.r", "adapter.n_experts",
                   "adapter.targets", "adapter.router")


# ----------------------------------------------------------------------------------------------------
# data: memory-mapped token files written by data/prepare.py

class Data:
    """Batches for pretraining (random windows of the corpus) or fine-tuning (whole examples, padded).

    A batch is drawn from a random generator seeded by (seed, split, step, micro-batch): it does not depend
    on what ran before, so a resumed run, or the same global batch split over DDP processes, sees exactly
    the batches an uninterrupted single process would. The files are checked against meta.json when opened
    (open_split), and block_size (set once the model is known) against the corpus.
    """

    def __init__(self, data_dir, mode, seed):
        self.meta = read_meta(data_dir)
        self.mode, self.seed, self._block_size = mode, seed, None
        prefix = "pretrain_" if mode == "pretrain" else "finetune_"
        self.files = {split: open_split(data_dir, prefix + split, self.meta, mode == "finetune")
                      for split in ("train", "val")}

    @property
    def block_size(self):
        return self._block_size

    @block_size.setter
    def block_size(self, T):
        """Windows (pretraining) and examples (fine-tuning) are cut at T + 1 tokens."""
        short = [s for s, f in self.files.items() if self.mode == "pretrain" and len(f["tokens"]) <= T + 1]
        if short:
            raise ValueError(f"pretrain_{short[0]}.bin holds {len(self.files[short[0]]['tokens'])} tokens, too few "
                             f"for windows of block_size + 1 = {T + 1}")
        self._block_size = T

    def batch(self, split, step, micro, batch_size, pad_to=None):
        """(x, y, loss_mask, n_tokens): int64/int64/float tensors of shape (batch_size, T), and how many of
        their positions hold an example (the rest is padding). Fine-tuning pads to the longest example, or to
        pad_to (a fixed shape, for a CUDA graph)."""
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1, step, micro])
        f = self.files[split]
        if self.mode == "pretrain":
            starts = rng.integers(0, len(f["tokens"]) - self.block_size - 1, batch_size)
            rows = np.stack([f["tokens"][s:s + self.block_size + 1] for s in starts]).astype(np.int64)
            x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
            return x, y, torch.ones_like(x, dtype=torch.float32), x.numel()
        # fine-tuning: whole examples (cut at block_size + 1 tokens), right-padded to the longest
        ids = rng.integers(0, len(f["idx"]) - 1, batch_size)
        spans = [(f["idx"][i], min(f["idx"][i + 1], f["idx"][i] + self.block_size + 1)) for i in ids]
        T = pad_to or max(b - a for a, b in spans) - 1
        x = torch.zeros(batch_size, T, dtype=torch.long)
        y = torch.zeros(batch_size, T, dtype=torch.long)
        mask = torch.zeros(batch_size, T)
        for row, (a, b) in enumerate(spans):
            tokens = torch.from_numpy(f["tokens"][a:b].astype(np.int64))
            x[row, :b - a - 1], y[row, :b - a - 1] = tokens[:-1], tokens[1:]
            # the mask marks tokens to predict: shifted like the targets
            mask[row, :b - a - 1] = torch.from_numpy(f["mask"][a + 1:b].astype(np.float32))
        return x, y, mask, sum(b - a - 1 for a, b in spans)


def open_split(data_dir, name, meta, examples):
    """The memory-mapped files of one split (tokens; with examples, also the loss mask and the offsets), checked
    against each other and meta.json first: a file cut short or from another build would otherwise train on
    garbage, or fail only when a batch reaches its end."""
    rebuild = f"rebuild it: python -m data.prepare --out={data_dir} (with the options in its meta.json)"

    def mapped(suffix, dtype):
        path = os.path.join(data_dir, f"{name}{suffix}.bin")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: {rebuild}")
        size, width = os.path.getsize(path), np.dtype(dtype).itemsize
        if size == 0 or size % width:
            raise ValueError(f"{path} holds {size} bytes, not a whole number of {np.dtype(dtype).name}s: {rebuild}")
        return np.memmap(path, dtype=dtype, mode="r")

    files = {"tokens": mapped("", np.uint16)}
    n, problems = len(files["tokens"]), []
    if meta["tokens"].get(name, n) != n:
        problems.append(f"{name}.bin holds {n:,} tokens, meta.json says {meta['tokens'][name]:,}")
    if examples:
        files["mask"], files["idx"] = mapped("_mask", np.uint8), np.array(mapped("_idx", np.int64))
        idx = files["idx"]
        if len(files["mask"]) != n:
            problems.append(f"{name}_mask.bin holds {len(files['mask']):,} entries for {n:,} tokens")
        if len(idx) < 2 or idx[0] != 0 or idx[-1] != n or (np.diff(idx) <= 0).any():
            problems.append(f"{name}_idx.bin's offsets do not run from 0 up to the {n:,} tokens of {name}.bin")
    if problems:
        raise ValueError(f"{data_dir} is damaged or mixes builds: {'; '.join(problems)}; {rebuild}")
    return files


# ----------------------------------------------------------------------------------------------------
# the model: a checkpoint or a fresh GPT, then the adapters

def build_model(cfg, meta, resume, given=()):
    """The model to train, with adapters injected and everything else frozen when fine-tuning, and the
    weights of the run being resumed (resume: its checkpoint dict, or None). Whatever it starts from must
    have been trained with the data's tokenizer (meta: the data's meta.json); the shape settings among given
    (the keys the user set) must be the base's.
    Returns (model, base description for adapter checkpoints or None)."""
    vocab_size = meta["vocab_size"]
    if resume is not None:
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        checkpoint.check_tokenizer(resume, path, meta, cfg.data_dir)
        model = checkpoint.base_of(resume, path, base=cfg.base or None, dropout=cfg.dropout)
    elif cfg.init_from == "scratch":
        # the embedding table is padded to a multiple of 64, which suits the matmul units
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=64 * math.ceil(vocab_size / 64),
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    else:
        model = checkpoint.load_base(cfg.init_from, cfg.dropout, meta=meta, data_dir=cfg.data_dir)
        differ = [f"{k}={getattr(cfg, k)} (the base has {getattr(model.config, k)})" for k in SHAPE
                  if k in given and getattr(cfg, k) != getattr(model.config, k)]
        if differ:
            raise cli.ConfigError("settings this run would not use (the model's shape comes from init_from): "
                                  + "; ".join(differ))
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the data's "
                         f"tokenizer's ({vocab_size}): prepare the data with the model's tokenizer")
    base = None
    if cfg.uses_adapters:
        if resume is not None:
            base = dict(resume["base"], **({"init_from": cfg.base} if cfg.base else {}))
        else:
            base = {"init_from": cfg.init_from, "fingerprint": checkpoint.fingerprint(model)}
        moelora.inject(model, cfg.adapter)
        moelora.mark_only_adapters_trainable(model)
    if resume is not None:
        checkpoint.load_weights(model, resume, os.path.join(cfg.out_dir, "ckpt.pt"))
    return model, base


# ----------------------------------------------------------------------------------------------------
# the training loop

def lr_at(step, cfg):
    """Linear warmup, then cosine decay from lr to min_lr at lr_decay_iters (default max_iters)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def to_device(batch, run):
    """A batch's tensors on the run's device. From pinned memory the copies are asynchronous: the host
    goes on preparing the next step while the GPU still runs this one."""
    if run.device_type != "cuda":
        return batch[:3]
    return [t.pin_memory().to(run.device, non_blocking=True) for t in batch[:3]]


def step_batches(data, step, cfg, run, pad_to=None):
    """This process's micro-batches of a step, on its device, and the example tokens of the whole step (all
    processes; padding not counted)."""
    micros = [data.batch("train", step, run.rank * run.accum + m, cfg.batch_size, pad_to) for m in range(run.accum)]
    return [to_device(b, run) for b in micros], sum(b[3] for b in micros) * run.world


class TrainingLoss(nn.Module):
    """What a training step differentiates: the model's language-model loss plus the adapters' auxiliary
    losses (moelora.collect_aux, auxiliary_loss), in one forward. One module so that --compile traces all
    of it: the router's balance and contrastive losses are many small ops, which torch.compile fuses only
    when they are inside the compiled region. The module enters autocast (run.autocast: bf16 or none) itself,
    around the model alone (the auxiliary losses compute in float32): entered outside a compiled function, an
    autocast reached its compiled backward, whose float32 matmuls then ran in bf16, gradients 1-2% off
    (dev/NOTES.md, the compiled NaN). Returns (loss, the detached float (lm, balance, contrastive) to log; a
    term the model lacks is 0)."""

    def __init__(self, model, adapter_cfg, autocast=None):
        super().__init__()
        self.model, self.adapter_cfg = model, adapter_cfg
        self.autocast = autocast if autocast is not None else nullcontext()

    def forward(self, x, y, mask):
        with self.autocast:
            _, lm_loss = self.model(x, y, loss_mask=mask)
        aux = moelora.collect_aux(self.model)
        loss = lm_loss + moelora.auxiliary_loss(aux, self.adapter_cfg)
        terms = [aux[k] if aux[k] is not None else lm_loss.new_zeros(()) for k in ("balance", "contrastive")]
        return loss, torch.stack([lm_loss, *terms]).detach().float()


def train_step(step_loss, raw_model, optimizer, batches, cfg, run):
    """One optimisation step over this process's micro-batches (each x, y, mask on the device): forward and
    backward (DDP averages the gradients over processes), gradient clipping, the optimizer's update.
    step_loss: a TrainingLoss of raw_model, maybe compiled or DDP-wrapped.
    Returns a device tensor (lm, balance, contrastive, gradient norm), the losses averaged over micro-batches
    and processes. Nothing here waits for the GPU (the loop reads the values when it logs), which is also
    what lets a CUDA graph hold the whole step (GraphedStep)."""
    sums = torch.zeros(3, device=run.device)
    for micro, (x, y, mask) in enumerate(batches):
        if run.ddp:  # all-reduce the gradients only on the last micro-batch
            step_loss.require_backward_grad_sync = micro == len(batches) - 1
        loss, terms = step_loss(x, y, mask)  # under run.autocast where TrainingLoss says
        (loss / len(batches)).backward()
        sums += terms
    losses = sums / len(batches)
    if run.ddp:
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)  # gloo has no AVG
        losses /= run.world
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or math.inf)
    optimizer.step()
    return torch.cat([losses, grad_norm.float().reshape(1)])


def eager_step(step_loss, raw_model, optimizer, batches, lr, cfg, run):
    """train_step at learning rate lr, launched op by op; the gradients are cleared for the next step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    values = train_step(step_loss, raw_model, optimizer, batches, cfg, run)
    optimizer.zero_grad(set_to_none=True)
    return values


class GraphedStep:
    """train_step captured once as a CUDA graph, then replayed each step: the GPU runs the same kernels, and
    the host no longer launches them one by one (MoELoRA's routing and losses are many small ops, which cost
    more to launch than to run). Shapes are fixed (batches padded to block_size) and so is every tensor the
    graph reads: each step copies its batch into the graph's own input tensors and its learning rate into
    a tensor the optimizer reads. The first WARMUP steps run eagerly, on a side stream, as capture needs
    (the optimizer's state, cuBLAS's workspaces and the kernel exist before it); they are ordinary steps.
    The random numbers of dropout and the contrastive subsample are drawn afresh on every replay, but not in
    the order an eager run draws them: a resumed run continues as well as an eager one, not bit for bit."""

    WARMUP = 3

    def __init__(self, step_loss, raw_model, optimizer, cfg, run):
        self.step_loss, self.raw_model, self.optimizer = step_loss, raw_model, optimizer
        self.cfg, self.run = cfg, run
        self.steps, self.graph = 0, None

    def __call__(self, batch, lr):
        if self.graph is None and self.steps < self.WARMUP:
            self.steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = eager_step(self.step_loss, self.raw_model, self.optimizer, [batch], lr, self.cfg, self.run)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.inputs = [t.clone() for t in batch]
            self.lr = torch.tensor(float(lr), device=self.run.device)
            for group in self.optimizer.param_groups:
                group["lr"], group["capturable"] = self.lr, True
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # recorded, not run: the replay below runs it
                self.out = train_step(self.step_loss, self.raw_model, self.optimizer, [self.inputs], self.cfg, self.run)
        for static, t in zip(self.inputs, batch):
            static.copy_(t, non_blocking=True)
        self.lr.fill_(lr)
        self.graph.replay()
        return self.out


class NonFiniteWatch:
    """Notes the first step whose losses or gradient norm are not finite, on the device, without waiting for
    it; check() reads the note (which waits) where the loop must know: before it logs, evaluates or saves.
    A step after that one may have run, but its weights are never saved."""

    def __init__(self, device, step):
        self.step = torch.full((), float(step), device=device)
        self.first = torch.full((5,), float("nan"), device=device)  # (step, lm, balance, contrastive, grad norm)
        self.seen = torch.zeros((), dtype=torch.bool, device=device)

    def update(self, values):
        bad = ~torch.isfinite(values).all()
        self.first = torch.where(bad & ~self.seen, torch.cat([self.step[None], values]), self.first)
        self.seen = self.seen | bad
        self.step = self.step + 1

    def check(self, saved_step, out_dir):
        if not self.seen.item():
            return
        step, lm, bal, con, grad_norm = self.first.tolist()
        raise FloatingPointError(
            f"loss or gradient not finite at step {int(step)} (lm {lm}, balance {bal}, contrastive {con}, gradient "
            f"norm {grad_norm}); stopping. " + (f"{out_dir}/ckpt.pt (step {saved_step}) is untouched"
                                                 if saved_step is not None else "No checkpoint was saved yet") +
            "; try a lower lr or dtype=float32, then init_from=resume.")


@torch.no_grad()
def estimate_val_loss(model, data, cfg, run):
    model.eval()
    losses = []
    for k in range(cfg.eval_iters):
        x, y, mask = to_device(data.batch("val", 0, k, cfg.batch_size), run)
        with run.autocast:
            losses.append(model(x, y, loss_mask=mask)[1].item())
    model.train()
    return sum(losses) / len(losses)


def evaluate_and_log(raw_model, data, cfg, run, step, log_file):
    """Validation loss (and, when asked, task accuracy) at this step, printed and logged; the val loss."""
    val = estimate_val_loss(raw_model, data, cfg, run)
    if not math.isfinite(val):
        raise FloatingPointError(f"validation loss is not finite after step {step} ({val}): stopping without saving "
                                 f"these weights over the last good checkpoint in {cfg.out_dir}; try a lower lr or "
                                 f"dtype=float32, then init_from=resume")
    record = {"iter": step, "val_loss": val}
    line = f"iter {step:5d} | val loss {val:.4f}"
    if cfg.mode == "finetune" and cfg.eval_items > 0:
        record["accuracy"] = evaluate.evaluate_tasks(raw_model, cfg.data_dir, max_items=cfg.eval_items,
                                                     device=run.device)["accuracy"]
        line += f" | accuracy {json.dumps({k: round(v, 3) for k, v in record['accuracy'].items()})}"
    print(line, flush=True)
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    return val


@dataclass
class Run:
    """Where and how this process trains: filled in by setup_run."""
    ddp: bool
    rank: int
    world: int
    device: str
    device_type: str
    dtype: str
    autocast: object
    accum: int  # micro-batches per process per step


def setup_run(cfg):
    """The process's Run: torchrun sets RANK and WORLD_SIZE for DDP; otherwise a single process."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise cli.ConfigError(f"device={device}, but CUDA is not available here (torch {torch.__version__}): "
                              f"use device=cpu or device=auto")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise cli.ConfigError(f"device={device}, but there are {torch.cuda.device_count()} GPUs (cuda:0 ...)")
    if cfg.uses_adapters and cfg.adapter.impl == "cuda" and device_type != "cuda":
        raise cli.ConfigError(f"adapter.impl=cuda runs the CUDA kernel, which needs device=cuda (here {device})")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    if device_type == "cuda":
        # fine-tuning batches are padded to their longest example, so their length changes from step to step;
        # cuDNN's attention, which F.scaled_dot_product_attention prefers on Hopper, builds a plan for every new
        # shape (~0.1 s on an H200, dev/new_length_cost.py), flash attention next to nothing
        torch.backends.cuda.enable_cudnn_sdp(False)
    rank, world = 0, 1
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device_type == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    if cfg.cuda_graph and (device_type != "cuda" or ddp or cfg.grad_accum > 1):
        raise cli.ConfigError(f"cuda_graph=True captures one process's single micro-batch step on a GPU; here "
                              f"device={device}, {world} process(es), grad_accum={cfg.grad_accum}")
    if cfg.grad_accum % world:
        raise cli.ConfigError(f"grad_accum ({cfg.grad_accum}) must be a multiple of the number of processes ({world})")
    # autocast's cache of cast weights would keep tensors from outside a CUDA graph's capture: off with one
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16,
                                                                          cache_enabled=not cfg.cuda_graph)
    return Run(ddp, rank, world, device, device_type, dtype, autocast, cfg.grad_accum // world)


def read_config(argv):
    """The settings, the checkpoint being resumed (or None) and the keys argv set: init_from=resume reads the run's saved
    settings and puts this command line's overrides on top (e.g. a larger max_iters). A setting the run would
    not use, or one a resumed run cannot change, is an error (UNUSED_SETTINGS, check_resumable)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg, given = cli.parse(TrainConfig, argv), cli.given(TrainConfig, argv)
    resume = None
    if cfg.init_from == "resume":
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"init_from=resume, but {path} does not exist")
        resume = checkpoint.read(path)
        # the run stays in this out_dir, and reads its data where the checkpoint finds it (unless given here)
        saved = dict(resume["config"], out_dir=cfg.out_dir, data_dir=resume["data"]["data_dir"], base="")
        cfg = cli.parse(TrainConfig, argv, start=saved)
        check_resumable(cfg, given, resume)
    unused = [f"{key} ({why})" for when, keys, why in UNUSED_SETTINGS if when(cfg)
              for key in sorted(given) if any(key == k or k.endswith(".") and key.startswith(k) for k in keys)]
    if unused:
        raise cli.ConfigError("settings this run would not use: " + "; ".join(unused))
    return cfg, resume, given


def check_resumable(cfg, given, resume):
    """A resumed run continues the saved one: it keeps FIXED_ON_RESUME, has steps left to run, and does not
    move its learning-rate schedule unless told to."""
    old = cli.parse(TrainConfig, [], start=resume["config"])
    get = lambda c, key: functools.reduce(getattr, key.split("."), c)  # noqa: E731
    changed = [f"{k}={get(cfg, k)!r} (the run has {get(old, k)!r})" for k in FIXED_ON_RESUME
               if k in given and get(cfg, k) != get(old, k)]
    if changed:
        raise cli.ConfigError("a resumed run keeps the settings its weights and data depend on: " + "; ".join(changed)
                              + "; start a new run in another out_dir to change them")
    step = resume["iter_num"]
    if step >= cfg.max_iters:
        raise cli.ConfigError(f"the run in {cfg.out_dir} is at step {step}, which max_iters={cfg.max_iters} does "
                              f"not go past: pass a larger --max_iters to continue it")
    before, after = old.lr_decay_iters or old.max_iters, cfg.lr_decay_iters or cfg.max_iters
    if before != after and cfg.lr_decay_iters == 0:
        raise cli.ConfigError(f"max_iters={cfg.max_iters} (the run had {old.max_iters}) would move the learning-rate "
                              f"schedule, which decays over max_iters while lr_decay_iters=0: pass "
                              f"--lr_decay_iters={before} to keep it (min_lr after step {before}) or "
                              f"--lr_decay_iters={after} to stretch it")


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM while training asks the loop to stop: the step in flight finishes, then the
    loop saves and stops. Saving at a step boundary is what makes resuming exact: the weights, the optimizer,
    the RNG states and the step count all belong to one moment (an interrupt inside a step would save the RNG
    after that step's draws, for a step not done). A second signal stops at once, without saving."""

    def __enter__(self):
        self.asked, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():  # only the main thread handles signals
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt("stopped at once, without saving: the last checkpoint is the one to resume")
        self.asked = True
        os.write(2, b"\nstopping after this step, then saving (again to stop at once, without saving)\n")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def asked_anywhere(self, run):
        """Whether any process was asked to stop: they all stop at the same step."""
        if not run.ddp:
            return self.asked
        flag = torch.tensor([float(self.asked)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def open_log(out_dir, step, resuming):
    """out_dir/log.jsonl, to append to: a new run starts it afresh; a resumed one keeps the records up to its
    step (later ones are of steps about to run again, and a killed run may have cut the last line short)."""
    path = os.path.join(out_dir, "log.jsonl")
    kept = []
    if resuming and os.path.exists(path):
        for line in open(path):
            with suppress(ValueError):
                if json.loads(line).get("iter", 0) <= step:
                    kept.append(line.rstrip("\n") + "\n")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return open(path, "a")


def main(argv=None):
    cfg, resume, given = read_config(argv)
    run = setup_run(cfg)
    master = run.rank == 0
    torch.manual_seed(cfg.seed + run.rank)
    # one run at a time in out_dir; a new run never writes over another's checkpoint
    lock = checkpoint.OutDirLock(cfg.out_dir, resuming=resume is not None) if master else None
    log_file = None
    try:
        data = Data(cfg.data_dir, cfg.mode, cfg.seed)  # its files checked against its meta.json
        if cfg.mode == "finetune" and cfg.train_on_inputs != data.meta.get("train_on_inputs", False):
            raise cli.ConfigError(f"train_on_inputs={cfg.train_on_inputs}, but {cfg.data_dir} was prepared with "
                                  f"train_on_inputs={data.meta.get('train_on_inputs')}: re-run data.prepare")
        model, base = build_model(cfg, data.meta, resume, given)
        data.block_size = model.config.block_size
        model.to(run.device)
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), run.device_type)
        step, best_val, saved_step = 0, float("inf"), None
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            step, best_val = resume["iter_num"], resume["best_val_loss"]
            saved_step = step
            checkpoint.set_rng_state(resume["rng"])
        raw_model = model  # saved and inspected: never the compiled or DDP wrapper
        # what a step differentiates: compiled and wrapped whole
        step_loss = TrainingLoss(model, cfg.adapter, run.autocast)
        if cfg.compile:
            step_loss = torch.compile(step_loss)
        if run.ddp:
            device_ids = [int(run.device.split(":")[1])] if run.device_type == "cuda" else None
            step_loss = DDP(step_loss, device_ids=device_ids)

        def save():
            nonlocal saved_step
            state = checkpoint.training_state(raw_model, optimizer, cfg, step, best_val, base, data.meta)
            checkpoint.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), state)
            saved_step = step

        counts = moelora.count_parameters(raw_model)
        if master:
            log_file = open_log(cfg.out_dir, step, resuming=resume is not None)
            print(f"{cfg.mode} | adapter={cfg.adapter.kind if cfg.mode == 'finetune' else '-'} | device={run.device} "
                  f"x{run.world} | dtype={run.dtype} | params: base {counts['base']:,}, adapter {counts['adapter']:,}, "
                  f"router {counts['router']:,}, trainable {counts['trainable']:,}")
        graphed = GraphedStep(step_loss, raw_model, optimizer, cfg, run) if cfg.cuda_graph else None
        pad_to = raw_model.config.block_size if graphed else None  # a CUDA graph: every batch of one shape
        watch = NonFiniteWatch(run.device, step)
        t_last, tokens_since = time.time(), 0
        with StopOnSignal() as stop:
            while step < cfg.max_iters:
                if stop.asked_anywhere(run):  # Ctrl-C: saved between two steps, so the resume is exact
                    watch.check(saved_step, cfg.out_dir)
                    if master:
                        save()
                    raise KeyboardInterrupt(f"interrupted at step {step}: saved {cfg.out_dir}/ckpt.pt; continue "
                                            f"with --init_from=resume")
                lr = lr_at(step, cfg)
                batches, tokens = step_batches(data, step, cfg, run, pad_to)
                tokens_since += tokens
                if graphed:
                    values = graphed(batches[0], lr)
                else:
                    values = eager_step(step_loss, raw_model, optimizer, batches, lr, cfg, run)
                watch.update(values)
                step += 1

                logging = step % cfg.log_interval == 0 or step == cfg.max_iters
                if logging:  # every process: they all stop together
                    watch.check(saved_step, cfg.out_dir)
                if master and logging:
                    lm, bal, con, _ = values.tolist()
                    dt = time.time() - t_last
                    record = {"iter": step, "loss": lm, "balance": bal, "contrastive": con, "lr": lr,
                              "tokens_per_s": tokens_since / dt, "ms_per_iter": 1000 * dt / cfg.log_interval}
                    print(f"iter {step:5d} | loss {lm:.4f} | bal {bal:.3f} | con {con:.3f} | lr {lr:.2e} | "
                          f"{record['tokens_per_s']:,.0f} tok/s | {record['ms_per_iter']:.0f} ms/iter", flush=True)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    t_last, tokens_since = time.time(), 0
                if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                    watch.check(saved_step, cfg.out_dir)  # weights after a step that was not finite: never saved
                    if master:  # a validation loss or weights that are not finite stop the run unsaved
                        best_val = min(best_val, evaluate_and_log(raw_model, data, cfg, run, step, log_file))
                        save()
                    t_last, tokens_since = time.time(), 0
        if run.ddp:  # every process finishes together: one that tears down early can abort the others' exit
            dist.barrier()
    finally:
        if log_file:
            log_file.close()
        if lock:
            lock.release()
        if run.ddp:
            dist.destroy_process_group()
    return raw_model


if __name__ == "__main__":
    cli.run(main)  # an expected error is one line "error: ..." and exit code 1; Ctrl-C exit code 130
