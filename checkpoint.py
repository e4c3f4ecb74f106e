"""
Checkpoints: what train.py writes and what train.py (on resume), evaluate.py and the dev probes read.

    model, ckpt = checkpoint.load_checkpoint("out/demo/moelora/ckpt.pt")    # base + adapters, ready to use

A checkpoint (ckpt.pt, one torch.save'd dict) is either
  "full":    every weight of the model (pretraining, full fine-tuning), or
  "adapter": the adapter parameters only, plus the name of their base ("init_from": one of our full
             checkpoints or a Hugging Face GPT-2 directory or name) and a fingerprint of its weights, so that
             the adapters are never put on another base by mistake.
Beside the weights it holds what resuming needs: the optimizer, the settings, the step, the RNG states.
Saves are atomic (a temporary file, flushed, then renamed): a crash or Ctrl-C mid-save leaves the last good
checkpoint in place.
"""

import dataclasses
import hashlib
import os

import numpy as np
import torch

import moelora
from model import GPT, GPTConfig


def fingerprint(model):
    """A short hash of the base model's weights: an adapter checkpoint names the base it was trained on."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not moelora.is_adapter_param(name):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read(path):
    """The checkpoint dict at path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_base(init_from, dropout=0.0):
    """A GPT from one of our full checkpoints (ckpt.pt) or a Hugging Face GPT-2 directory or name."""
    if not init_from.endswith(".pt"):
        return GPT.from_pretrained(init_from, dropout=dropout)
    if not os.path.exists(init_from):
        raise FileNotFoundError(f"base checkpoint {init_from} does not exist (pretrain one with "
                                f"python train.py config/demo_pretrain.toml)")
    ckpt = read(init_from)
    if ckpt["kind"] != "full":
        raise ValueError(f"{init_from} holds adapters only; a base must be a full checkpoint")
    model = GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout)))
    model.load_state_dict(ckpt["model"])
    return model


def base_of(ckpt, path, base=None, dropout=0.0):
    """The model a checkpoint's weights go into, before they do: for an adapter checkpoint its base (from
    the path it names, or from base, for a moved base), checked against the fingerprint; for a full one a
    GPT of its shape."""
    if ckpt["kind"] == "full":
        return GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout)))
    base_path = base or ckpt["base"]["init_from"]
    model = load_base(base_path, dropout)
    if fingerprint(model) != ckpt["base"]["fingerprint"]:
        raise ValueError(f"{path} was trained on a base with fingerprint {ckpt['base']['fingerprint']}, but "
                         f"{base_path} has {fingerprint(model)}: not the same base model")
    return model


def load_weights(model, ckpt):
    """Put a checkpoint's weights into a model built for it (base_of, then the same adapters injected)."""
    if ckpt["kind"] == "adapter":
        return moelora.load_adapter_state_dict(model, ckpt["model"])
    model.load_state_dict(ckpt["model"])
    return model


def load_checkpoint(path, base=None, dropout=0.0):
    """(model, checkpoint) from a ckpt.pt: a full model, or its base with the adapters injected and loaded.
    base overrides the base path an adapter checkpoint names (for a moved base); its fingerprint must match."""
    ckpt = read(path)
    model = base_of(ckpt, path, base, dropout)
    if ckpt["kind"] == "adapter":
        moelora.inject(model, moelora.AdapterConfig(**ckpt["adapter"]))
    return load_weights(model, ckpt), ckpt


def training_state(model, optimizer, cfg, step, best_val, base, data_meta):
    """Everything a resumed run needs, as the dict save_checkpoint writes. model is the raw module (never
    the compiled or DDP wrapper); base is None for a full checkpoint, else {"init_from", "fingerprint"}."""
    adapters_only = base is not None
    return {
        "kind": "adapter" if adapters_only else "full",
        "model": moelora.adapter_state_dict(model) if adapters_only else model.state_dict(),
        "model_args": dataclasses.asdict(model.config),
        "adapter": dataclasses.asdict(cfg.adapter) if adapters_only else None,
        "base": base,
        "optimizer": optimizer.state_dict(),
        "config": dataclasses.asdict(cfg),
        "iter_num": step,
        "best_val_loss": best_val,
        "rng": rng_state(),
        "data": {"data_dir": os.path.abspath(cfg.data_dir), "tokenizer": data_meta.get("tokenizer"),
                 "vocab_size": data_meta["vocab_size"]},
    }


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
