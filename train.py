"""
Train a GPT: pretrain a base (all parameters) on the corpus, or fine-tune it on the tasks with LoRA,
MoELoRA or all parameters. One readable loop, nanoGPT-style.

    python -m data.prepare                                   # once: corpus, tasks, tokenizer -> out/data
    python train.py config/demo_pretrain.toml                # base model -> out/demo/base/ckpt.pt
    python train.py config/demo_finetune.toml                # MoELoRA adapters -> out/demo/moelora/ckpt.pt
    python train.py config/demo_finetune.toml --adapter=lora --lora_r=8 --out_dir=out/demo/lora
    torchrun --standalone --nproc_per_node=2 train.py ...    # DDP: NCCL on GPUs, gloo on CPUs

Settings: the TrainConfig dataclass below; presets in config/*.toml; --key=value overrides; --help lists
them all. init_from: "scratch" (pretraining), a checkpoint of ours (ckpt.pt), a Hugging Face GPT-2
directory or name, or "resume" (continue the run in out_dir exactly where it stopped).

Checkpoints (out_dir/ckpt.pt) are written atomically: a crash or Ctrl-C mid-save leaves the last good one
in place. A fine-tuning checkpoint holds the adapters only and names its base (path and fingerprint).
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import cli
import evaluate
import moelora
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
    seed: int = 1337

    @property
    def uses_adapters(self):
        return self.mode == "finetune" and self.adapter.kind != "none"


# ----------------------------------------------------------------------------------------------------
# data: memory-mapped token files written by data/prepare.py

class Data:
    """Batches for pretraining (random windows of the corpus) or fine-tuning (whole examples, padded).

    A batch is drawn from a random generator seeded by (seed, split, step, micro-batch): it does not depend
    on what ran before, so a resumed run, or the same global batch split over DDP processes, sees exactly
    the batches an uninterrupted single process would.
    """

    def __init__(self, data_dir, mode, block_size, seed):
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no prepared data in {data_dir} (no meta.json): run python -m data.prepare "
                                    f"--out={data_dir}")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.mode, self.block_size, self.seed = mode, block_size, seed
        self.files = {}
        for split in ("train", "val"):
            prefix = os.path.join(data_dir, ("pretrain_" if mode == "pretrain" else "finetune_") + split)
            self.files[split] = {"tokens": np.memmap(prefix + ".bin", dtype=np.uint16, mode="r")}
            if mode == "finetune":
                self.files[split]["mask"] = np.memmap(prefix + "_mask.bin", dtype=np.uint8, mode="r")
                self.files[split]["idx"] = np.fromfile(prefix + "_idx.bin", dtype=np.int64)

    def batch(self, split, step, micro, batch_size):
        """(x, y, loss_mask) as int64/int64/float tensors of shape (batch_size, T)."""
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1, step, micro])
        f = self.files[split]
        if self.mode == "pretrain":
            starts = rng.integers(0, len(f["tokens"]) - self.block_size - 1, batch_size)
            rows = np.stack([f["tokens"][s:s + self.block_size + 1] for s in starts]).astype(np.int64)
            x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
            return x, y, torch.ones_like(x, dtype=torch.float32)
        # fine-tuning: whole examples (cut at block_size + 1 tokens), right-padded to the longest
        ids = rng.integers(0, len(f["idx"]) - 1, batch_size)
        spans = [(f["idx"][i], min(f["idx"][i + 1], f["idx"][i] + self.block_size + 1)) for i in ids]
        T = max(b - a for a, b in spans) - 1
        x = torch.zeros(batch_size, T, dtype=torch.long)
        y = torch.zeros(batch_size, T, dtype=torch.long)
        mask = torch.zeros(batch_size, T)
        for row, (a, b) in enumerate(spans):
            tokens = torch.from_numpy(f["tokens"][a:b].astype(np.int64))
            x[row, :b - a - 1], y[row, :b - a - 1] = tokens[:-1], tokens[1:]
            # the mask marks tokens to predict: shifted like the targets
            mask[row, :b - a - 1] = torch.from_numpy(f["mask"][a + 1:b].astype(np.float32))
        return x, y, mask


# ----------------------------------------------------------------------------------------------------
# the model: a checkpoint or a fresh GPT, then the adapters

def build_model(cfg, vocab_size, resume):
    """The model to train, with adapters injected and everything else frozen when fine-tuning, and the
    weights of the run being resumed (resume: its checkpoint dict, or None).
    Returns (model, base description for adapter checkpoints or None)."""
    if resume is not None:
        model = checkpoint.base_of(resume, os.path.join(cfg.out_dir, "ckpt.pt"), dropout=cfg.dropout)
    elif cfg.init_from == "scratch":
        if cfg.mode != "pretrain":
            raise ValueError("fine-tuning needs a base: set init_from to a checkpoint (e.g. "
                             "out/demo/base/ckpt.pt) or a Hugging Face GPT-2 directory")
        # the embedding table is padded to a multiple of 64, which suits the matmul units
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=64 * math.ceil(vocab_size / 64),
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    else:
        model = checkpoint.load_base(cfg.init_from, cfg.dropout)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the data's "
                         f"tokenizer's ({vocab_size}): prepare the data with the model's tokenizer")
    base = None
    if cfg.uses_adapters:
        if resume is not None:
            base = resume["base"]
        else:
            base_path = os.path.abspath(cfg.init_from) if os.path.exists(cfg.init_from) else cfg.init_from
            base = {"init_from": base_path, "fingerprint": checkpoint.fingerprint(model)}
        moelora.inject(model, cfg.adapter)
        moelora.mark_only_adapters_trainable(model)
    if resume is not None:
        checkpoint.load_weights(model, resume)
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


def train_step(model, raw_model, data, cfg, step, run):
    """Forward and backward over this process's micro-batches of one step (the gradients of all processes
    are averaged by DDP). Returns the mean (lm, balance, contrastive) losses over every process, and the
    tokens the step trained on."""
    sums, tokens = torch.zeros(3, device=run.device), 0
    for micro in range(run.accum):
        x, y, mask = (t.to(run.device) for t in data.batch("train", step, run.rank * run.accum + micro,
                                                            cfg.batch_size))
        if run.ddp:  # all-reduce the gradients only on the last micro-batch
            model.require_backward_grad_sync = micro == run.accum - 1
        with run.autocast:
            _, lm_loss = model(x, y, loss_mask=mask)
            aux = moelora.collect_aux(raw_model)
            loss = lm_loss + moelora.auxiliary_loss(aux, cfg.adapter)
        (loss / run.accum).backward()
        terms = [aux[k] if aux[k] is not None else lm_loss.new_zeros(()) for k in ("balance", "contrastive")]
        sums += torch.stack([lm_loss.detach(), *terms]).detach().float()
        tokens += x.numel() * run.world
    losses = sums / run.accum
    if run.ddp:
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)  # gloo has no AVG
        losses /= run.world
    return losses.tolist(), tokens


@torch.no_grad()
def estimate_val_loss(model, data, cfg, run):
    model.eval()
    losses = []
    for k in range(cfg.eval_iters):
        x, y, mask = (t.to(run.device) for t in data.batch("val", 0, k, cfg.batch_size))
        with run.autocast:
            losses.append(model(x, y, loss_mask=mask)[1].item())
    model.train()
    return sum(losses) / len(losses)


def evaluate_and_log(raw_model, data, cfg, run, step, log_file):
    """Validation loss (and, when asked, task accuracy) at this step, printed and logged; the val loss."""
    val = estimate_val_loss(raw_model, data, cfg, run)
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
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    if dtype not in ("float32", "bfloat16"):
        raise cli.ConfigError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    rank, world = 0, 1
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device_type == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    if cfg.grad_accum % world:
        raise cli.ConfigError(f"grad_accum ({cfg.grad_accum}) must be a multiple of the number of processes ({world})")
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)
    return Run(ddp, rank, world, device, device_type, dtype, autocast, cfg.grad_accum // world)


def read_config(argv):
    """The settings, and the checkpoint being resumed (or None): init_from=resume reads the run's saved
    settings and puts this command line's overrides on top (e.g. a larger max_iters)."""
    cfg = cli.parse(TrainConfig, argv)
    resume = None
    if cfg.init_from == "resume":
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"init_from=resume, but {path} does not exist")
        resume = checkpoint.read(path)
        cfg = cli.parse(TrainConfig, argv, start=resume["config"])
    if cfg.mode not in ("pretrain", "finetune") or cfg.adapter.kind not in ("lora", "moelora", "none"):
        raise cli.ConfigError(f"mode must be pretrain|finetune and adapter.kind lora|moelora|none; got mode="
                              f"{cfg.mode!r}, adapter.kind={cfg.adapter.kind!r}")
    return cfg, resume


def main(argv=None):
    cfg, resume = read_config(argv)
    run = setup_run(cfg)
    master = run.rank == 0
    torch.manual_seed(cfg.seed + run.rank)

    data = Data(cfg.data_dir, cfg.mode, cfg.block_size, cfg.seed)
    if cfg.mode == "finetune" and cfg.train_on_inputs != data.meta.get("train_on_inputs", False):
        raise cli.ConfigError(f"train_on_inputs={cfg.train_on_inputs}, but {cfg.data_dir} was prepared with "
                              f"train_on_inputs={data.meta.get('train_on_inputs')}: re-run data.prepare")
    model, base = build_model(cfg, data.meta["vocab_size"], resume)
    data.block_size = model.config.block_size if cfg.mode == "finetune" else cfg.block_size
    model.to(run.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), run.device_type)
    step, best_val = 0, float("inf")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, best_val = resume["iter_num"], resume["best_val_loss"]
        checkpoint.set_rng_state(resume["rng"])
    raw_model = model  # saved and inspected: never the compiled or DDP wrapper
    if cfg.compile:
        model = torch.compile(model)
    if run.ddp:
        model = DDP(model, device_ids=[int(run.device.split(":")[1])] if run.device_type == "cuda" else None)

    def save():
        state = checkpoint.training_state(raw_model, optimizer, cfg, step, best_val, base, data.meta)
        checkpoint.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), state)

    counts = moelora.count_parameters(raw_model)
    log_file = None
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_file = open(os.path.join(cfg.out_dir, "log.jsonl"), "a")
        print(f"{cfg.mode} | adapter={cfg.adapter.kind if cfg.mode == 'finetune' else '-'} | device={run.device} "
              f"x{run.world} | dtype={run.dtype} | params: base {counts['base']:,}, adapter {counts['adapter']:,}, "
              f"router {counts['router']:,}, trainable {counts['trainable']:,}")
    t_last, tokens_since = time.time(), 0
    try:
        while step < cfg.max_iters:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            (lm, bal, con), tokens = train_step(model, raw_model, data, cfg, step, run)
            tokens_since += tokens
            if not math.isfinite(lm + bal + con):
                # the step is not applied and nothing is saved: the last good checkpoint stays
                raise FloatingPointError(
                    f"loss is not finite at step {step} (lm {lm}, balance {bal}, contrastive {con}); stopping. "
                    f"The last good checkpoint in {cfg.out_dir} is untouched; try a lower lr or dtype=float32, "
                    f"then init_from=resume.")
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if master and (step % cfg.log_interval == 0 or step == cfg.max_iters):
                dt = time.time() - t_last
                record = {"iter": step, "loss": lm, "balance": bal, "contrastive": con, "lr": lr,
                          "tokens_per_s": tokens_since / dt, "ms_per_iter": 1000 * dt / cfg.log_interval}
                print(f"iter {step:5d} | loss {lm:.4f} | bal {bal:.3f} | con {con:.3f} | lr {lr:.2e} | "
                      f"{record['tokens_per_s']:,.0f} tok/s | {record['ms_per_iter']:.0f} ms/iter", flush=True)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                t_last, tokens_since = time.time(), 0
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                if master:
                    best_val = min(best_val, evaluate_and_log(raw_model, data, cfg, run, step, log_file))
                    save()
                t_last, tokens_since = time.time(), 0
        if run.ddp:  # every process finishes together: one that tears down early can abort the others' exit
            dist.barrier()
    except KeyboardInterrupt:
        if master:
            print(f"\ninterrupted at step {step}: saving a checkpoint to resume from", flush=True)
            save()
    finally:
        if log_file:
            log_file.close()
        if run.ddp:
            dist.destroy_process_group()
    return raw_model


if __name__ == "__main__":
    try:
        main()
    except (cli.ConfigError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
