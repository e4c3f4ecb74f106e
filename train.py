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

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import cli
import moelora
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # what to do
    mode: str = "finetune"  # "pretrain" (corpus, all parameters) | "finetune" (tasks)
    init_from: str = "scratch"  # "scratch" | path to ckpt.pt | Hugging Face dir or name | "resume"
    adapter: str = "moelora"  # fine-tuning: "lora" | "moelora" | "none" (all parameters)
    data_dir: str = "out/data"
    out_dir: str = "out/run"
    # model, when pretraining from scratch
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    dropout: float = 0.0
    # adapters (moelora.AdapterConfig)
    lora_r: int = 4  # rank of the LoRA, or of one MoELoRA expert
    lora_alpha: float = 8.0  # scaling = lora_alpha / lora_r
    lora_dropout: float = 0.05
    targets: tuple = ("attn.c_attn", "attn.c_proj")
    n_experts: int = 8
    top_k: int = 2
    router: str = "topk"  # a name in moelora.ROUTERS
    router_jitter: float = 0.0
    contrastive: str = "expert"
    contrastive_tau: float = 0.07
    contrastive_tokens: int = 256
    balance_coef: float = 0.01
    contrastive_coef: float = 0.01
    impl: str = "auto"
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
# models and checkpoints

def adapter_config(cfg):
    return moelora.AdapterConfig(
        kind=cfg.adapter, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.targets,
        n_experts=cfg.n_experts, top_k=cfg.top_k, router=cfg.router, router_jitter=cfg.router_jitter,
        contrastive=cfg.contrastive,
        contrastive_tau=cfg.contrastive_tau, contrastive_tokens=cfg.contrastive_tokens,
        balance_coef=cfg.balance_coef, contrastive_coef=cfg.contrastive_coef, impl=cfg.impl)


def fingerprint(model):
    """A short hash of the base model's weights: an adapter checkpoint names the base it was trained on."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not moelora.is_adapter_param(name):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_base(init_from, dropout=0.0):
    """A GPT from one of our full checkpoints (ckpt.pt) or a Hugging Face GPT-2 directory or name."""
    if init_from.endswith(".pt"):
        if not os.path.exists(init_from):
            raise FileNotFoundError(f"base checkpoint {init_from} does not exist (pretrain one with "
                                    f"python train.py config/demo_pretrain.toml)")
        ckpt = torch.load(init_from, map_location="cpu", weights_only=False)
        if ckpt["kind"] != "full":
            raise ValueError(f"{init_from} holds adapters only; a base must be a full checkpoint")
        model = GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout)))
        model.load_state_dict(ckpt["model"])
        return model
    return GPT.from_pretrained(init_from, dropout=dropout)


def load_checkpoint(path, base=None, dropout=0.0):
    """(model, checkpoint) from a ckpt.pt: a full model, or base + adapters. base overrides the base path
    the checkpoint names (for a moved checkpoint); its fingerprint must match."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["kind"] == "full":
        model = GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout)))
        model.load_state_dict(ckpt["model"])
        return model, ckpt
    base_path = base or ckpt["base"]["init_from"]
    model = load_base(base_path, dropout)
    if fingerprint(model) != ckpt["base"]["fingerprint"]:
        raise ValueError(f"{path} was trained on a base with fingerprint {ckpt['base']['fingerprint']}, but "
                         f"{base_path} has {fingerprint(model)}: not the same base model")
    moelora.inject(model, moelora.AdapterConfig(**ckpt["adapter"]))
    moelora.load_adapter_state_dict(model, ckpt["model"])
    return model, ckpt


def save_checkpoint(path, state):
    """Write to a temporary file, flush it to disk, then rename: the old checkpoint stays until the new
    one is complete, so a crash mid-save never leaves a corrupt ckpt.pt."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(cfg, vocab_size, resume):
    """The model to train, with adapters injected and everything else frozen when fine-tuning.
    Returns (model, base description for adapter checkpoints or None)."""
    if resume is not None and resume["kind"] == "adapter":
        model = load_base(resume["base"]["init_from"], cfg.dropout)
    elif resume is not None:
        model = GPT(GPTConfig(**dict(resume["model_args"], dropout=cfg.dropout)))
    elif cfg.init_from == "scratch":
        if cfg.mode != "pretrain":
            raise ValueError("fine-tuning needs a base: set init_from to a checkpoint (e.g. "
                             "out/demo/base/ckpt.pt) or a Hugging Face GPT-2 directory")
        # the embedding table is padded to a multiple of 64, which suits the matmul units
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=64 * math.ceil(vocab_size / 64),
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    else:
        model = load_base(cfg.init_from, cfg.dropout)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the data's "
                         f"tokenizer's ({vocab_size}): prepare the data with the model's tokenizer")
    base = None
    if cfg.mode == "finetune" and cfg.adapter != "none":
        base_path = resume["base"]["init_from"] if resume is not None else os.path.abspath(cfg.init_from) \
            if os.path.exists(cfg.init_from) else cfg.init_from
        base = {"init_from": base_path, "fingerprint": fingerprint(model)}
        moelora.inject(model, adapter_config(cfg))
        moelora.mark_only_adapters_trainable(model)
    if resume is not None:
        if resume["kind"] == "adapter":
            moelora.load_adapter_state_dict(model, resume["model"])
        else:
            model.load_state_dict(resume["model"])
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


def aux_terms(model, cfg):
    """The balance and contrastive losses of the last forward, averaged over MoELoRA layers (or zeros)."""
    aux = moelora.collect_aux(model)
    zero = torch.zeros(())
    return (aux["balance"] if aux["balance"] is not None else zero,
            aux["contrastive"] if aux["contrastive"] is not None else zero)


@torch.no_grad()
def estimate_val_loss(model, data, cfg, device, autocast):
    model.eval()
    losses = []
    for k in range(cfg.eval_iters):
        x, y, mask = (t.to(device) for t in data.batch("val", 0, k, cfg.batch_size))
        with autocast:
            losses.append(model(x, y, loss_mask=mask)[1].item())
    model.train()
    return sum(losses) / len(losses)


def setup_distributed(cfg):
    """(ddp, rank, world_size, device): torchrun sets RANK and WORLD_SIZE; otherwise a single process."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    if cfg.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    if not ddp:
        return False, 0, 1, device
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return True, rank, world, device


def main(argv=None):
    cfg = cli.parse(TrainConfig, argv)
    resume = None
    if cfg.init_from == "resume":
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"init_from=resume, but {path} does not exist")
        resume = torch.load(path, map_location="cpu", weights_only=False)
        # the saved settings, with this command line's overrides on top (e.g. a larger max_iters)
        cfg = cli.parse(TrainConfig, argv, start=resume["config"])
    if cfg.mode not in ("pretrain", "finetune") or cfg.adapter not in ("lora", "moelora", "none"):
        raise cli.ConfigError(f"mode must be pretrain|finetune and adapter lora|moelora|none; got mode="
                              f"{cfg.mode!r}, adapter={cfg.adapter!r}")

    ddp, rank, world, device = setup_distributed(cfg)
    master = rank == 0
    if cfg.grad_accum % world:
        raise cli.ConfigError(f"grad_accum ({cfg.grad_accum}) must be a multiple of the number of processes ({world})")
    accum = cfg.grad_accum // world  # micro-batches per process per step
    torch.manual_seed(cfg.seed + rank)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    if dtype not in ("float32", "bfloat16"):
        raise cli.ConfigError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=torch.bfloat16)

    data = Data(cfg.data_dir, cfg.mode, cfg.block_size, cfg.seed)
    if cfg.mode == "finetune" and cfg.train_on_inputs != data.meta.get("train_on_inputs", False):
        raise cli.ConfigError(f"train_on_inputs={cfg.train_on_inputs}, but {cfg.data_dir} was prepared with "
                              f"train_on_inputs={data.meta.get('train_on_inputs')}: re-run data.prepare")
    model, base = build_model(cfg, data.meta["vocab_size"], resume)
    data.block_size = model.config.block_size if cfg.mode == "finetune" else cfg.block_size
    model.to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device_type)
    step, best_val = 0, float("inf")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, best_val = resume["iter_num"], resume["best_val_loss"]
        set_rng_state(resume["rng"])
    raw_model = model  # saved and inspected: never the compiled or DDP wrapper
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device_type == "cuda" else None)

    counts = moelora.count_parameters(raw_model)
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"{cfg.mode} | adapter={cfg.adapter if cfg.mode == 'finetune' else '-'} | device={device} "
              f"x{world} | dtype={dtype} | params: base {counts['base']:,}, adapter {counts['adapter']:,}, "
              f"router {counts['router']:,}, trainable {counts['trainable']:,}")

    def checkpoint():
        adapters_only = base is not None
        state = {
            "kind": "adapter" if adapters_only else "full",
            "model": moelora.adapter_state_dict(raw_model) if adapters_only else raw_model.state_dict(),
            "model_args": dataclasses.asdict(raw_model.config),
            "adapter": dataclasses.asdict(adapter_config(cfg)) if adapters_only else None,
            "base": base,
            "optimizer": optimizer.state_dict(),
            "config": dataclasses.asdict(cfg),
            "iter_num": step,
            "best_val_loss": best_val,
            "rng": rng_state(),
            "data": {"data_dir": os.path.abspath(cfg.data_dir), "tokenizer": data.meta.get("tokenizer"),
                     "vocab_size": data.meta["vocab_size"]},
        }
        save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), state)

    log_file = open(os.path.join(cfg.out_dir, "log.jsonl"), "a") if master else None
    t_last, tokens_since = time.time(), 0
    try:
        while step < cfg.max_iters:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # one step: accum micro-batches per process, gradients averaged over all of them
            lm_sum = bal_sum = con_sum = 0.0
            for micro in range(accum):
                x, y, mask = (t.to(device) for t in data.batch("train", step, rank * accum + micro, cfg.batch_size))
                if ddp:  # all-reduce the gradients only on the last micro-batch
                    model.require_backward_grad_sync = micro == accum - 1
                with autocast:
                    _, lm_loss = model(x, y, loss_mask=mask)
                    balance, contrastive = aux_terms(raw_model, cfg)
                    loss = lm_loss + cfg.balance_coef * balance.to(device) + cfg.contrastive_coef * contrastive.to(device)
                (loss / accum).backward()
                lm_sum, bal_sum, con_sum = lm_sum + lm_loss.detach(), bal_sum + balance.detach(), con_sum + contrastive.detach()
                tokens_since += x.numel() * world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)

            losses = torch.stack([lm_sum.float(), torch.as_tensor(bal_sum).float().to(device),
                                  torch.as_tensor(con_sum).float().to(device)]) / accum
            if ddp:
                dist.all_reduce(losses, op=dist.ReduceOp.AVG if device_type == "cuda" else dist.ReduceOp.SUM)
                if device_type != "cuda":  # gloo has no AVG
                    losses /= world
            lm_value, bal_value, con_value = losses.tolist()
            if not math.isfinite(lm_value + bal_value + con_value):
                # the step is not applied and nothing is saved: the last good checkpoint stays
                raise FloatingPointError(
                    f"loss is not finite at step {step} (lm {lm_value}, balance {bal_value}, contrastive "
                    f"{con_value}); stopping. The last good checkpoint in {cfg.out_dir} is untouched; "
                    f"try a lower lr or dtype=float32, then init_from=resume.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if master and (step % cfg.log_interval == 0 or step == cfg.max_iters):
                dt = time.time() - t_last
                record = {"iter": step, "loss": lm_value, "balance": bal_value, "contrastive": con_value, "lr": lr,
                          "tokens_per_s": tokens_since / dt, "ms_per_iter": 1000 * dt / cfg.log_interval}
                print(f"iter {step:5d} | loss {lm_value:.4f} | bal {bal_value:.3f} | con {con_value:.3f} | "
                      f"lr {lr:.2e} | {record['tokens_per_s']:,.0f} tok/s | {record['ms_per_iter']:.0f} ms/iter",
                      flush=True)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                t_last, tokens_since = time.time(), 0

            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                if master:
                    val = estimate_val_loss(raw_model, data, cfg, device, autocast)
                    best_val = min(best_val, val)
                    record = {"iter": step, "val_loss": val}
                    if cfg.mode == "finetune" and cfg.eval_items > 0:
                        import eval as evaluation  # eval.py imports this file: import here, not at the top
                        record["accuracy"] = evaluation.evaluate_tasks(
                            raw_model, cfg.data_dir, max_items=cfg.eval_items, device=device)["accuracy"]
                    print(f"iter {step:5d} | val loss {val:.4f}" + (
                        f" | accuracy {json.dumps({k: round(v, 3) for k, v in record['accuracy'].items()})}"
                        if "accuracy" in record else ""), flush=True)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    checkpoint()
                t_last, tokens_since = time.time(), 0
        if ddp:  # every process finishes together: one that tears down early can abort the others' exit
            dist.barrier()
    except KeyboardInterrupt:
        if master:
            print(f"\ninterrupted at step {step}: saving a checkpoint to resume from", flush=True)
            checkpoint()
    finally:
        if log_file:
            log_file.close()
        if ddp:
            dist.destroy_process_group()
    return raw_model


if __name__ == "__main__":
    try:
        main()
    except (cli.ConfigError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
