"""
Checkpoints: what train.py writes and what train.py (on resume), evaluate.py and the dev probes read.

    model, ckpt = checkpoint.load_checkpoint("out/demo/moelora/ckpt.pt")    # base + adapters, ready to use

A checkpoint (ckpt.pt, one torch.save'd dict) is either
  "full":    every weight of the model (pretraining, full fine-tuning), or
  "adapter": the adapter parameters only, plus the name of their base ("init_from": one of our full
             checkpoints or a Hugging Face GPT-2 directory or name) and a fingerprint of its weights, so that
             the adapters are never put on another base by mistake.
Beside the weights it holds what resuming needs: the optimizer, the settings, the step, the RNG states, and
the identity of the data's tokenizer (meta.json's tokenizer_hash), checked wherever the checkpoint meets data.

Paths (the base, the data) are stored absolute and relative to the checkpoint's own directory; reading
prefers the relative one, so a project copied or moved as a whole uses its own files.

Saves are atomic (a temporary file of its own name, flushed, then renamed): a crash, a kill or a full disk
mid-save leaves the last good checkpoint in place, and weights that are not finite are never saved. A run
holds out_dir/train.lock while it writes there (OutDirLock): a second run on the same out_dir is refused.
"""

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import os
import secrets
import socket
import sys
import time

import numpy as np
import torch

import moelora
from data.prepare import read_meta
from model import GPT, GPTConfig

# what every checkpoint train.py writes holds
KEYS = ("kind", "model", "model_args", "adapter", "base", "optimizer", "config", "iter_num", "rng", "data")
LOCK_FILE = "train.lock"


def fingerprint(model):
    """A short hash of the base model's weights: an adapter checkpoint names the base it was trained on."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not moelora.is_adapter_param(name):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# reading

def read(path):
    """The checkpoint dict at path, its paths resolved for this machine; a missing, truncated or foreign
    file, or one whose weights are not finite, is an error naming the file and what is wrong with it."""
    if not os.path.isfile(path):
        where = " (a directory: name the ckpt.pt in it)" if os.path.isdir(path) else ""
        raise FileNotFoundError(f"checkpoint {path} does not exist{where}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip, another file format, a failed unpickling, ...
        raise ValueError(f"checkpoint {path} cannot be read, truncated or not a checkpoint "
                         f"({type(e).__name__}: {_one_line(e)})") from None
    missing = [k for k in KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(KEYS)
    if missing or ckpt["kind"] not in ("full", "adapter"):
        raise ValueError(f"{path} is not a checkpoint train.py wrote (it lacks {', '.join(missing) or 'a kind'})")
    broken = [name for name, t in ckpt["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise ValueError(f"checkpoint {path} holds weights that are not finite ({', '.join(broken[:3])})")
    directory = os.path.dirname(os.path.abspath(path))
    _resolve(ckpt["base"], "init_from", directory, f"{path}'s base")
    _resolve(ckpt["data"], "data_dir", directory, f"{path}'s data")
    return ckpt


def _resolve(record, key, directory, what):
    """record[key] as this machine reads it: the path relative to the checkpoint's directory where that
    exists (a moved or copied project), else the absolute one (a moved checkpoint). A hub name stays one."""
    if not record or not record.get("relative"):
        return
    local = os.path.normpath(os.path.join(directory, record["relative"]))
    if not os.path.exists(local) and os.path.exists(record[key]):
        print(f"note: {what} is not at {local}, where the checkpoint's directory puts it; using {record[key]}",
              file=sys.stderr)
        return
    record[key] = local


def check_tokenizer(ckpt, path, meta, data_dir):
    """Refuse data whose tokenizer is not the one the checkpoint was trained with: the same ids would mean
    other tokens. Compares tokenizer hashes, or the vocabulary sizes where a file predates the hash."""
    trained = ckpt["data"] or {}
    ours, theirs = trained.get("tokenizer_hash"), meta.get("tokenizer_hash")
    if (ours != theirs) if ours and theirs else trained.get("vocab_size") != meta["vocab_size"]:
        raise ValueError(f"{path} was trained on data of another tokenizer ({_tokenizer(trained)}) than the data "
                         f"in {data_dir} ({_tokenizer(meta)}): use data prepared with the checkpoint's tokenizer")


def _tokenizer(record):
    return f"{record.get('tokenizer')}, {record.get('vocab_size')} tokens, hash {record.get('tokenizer_hash')}"


def load_base(init_from, dropout=0.0, meta=None, data_dir=None):
    """A GPT from one of our full checkpoints (ckpt.pt) or a Hugging Face GPT-2 directory or name; with meta
    (the data's meta.json, from data_dir), checked to share the data's tokenizer."""
    if not init_from.endswith(".pt"):
        model = GPT.from_pretrained(init_from, dropout=dropout)
        if meta is not None and meta["vocab_size"] != model.config.vocab_size:
            raise ValueError(f"{init_from} has a vocabulary of {model.config.vocab_size} tokens but the data in "
                             f"{data_dir} has {meta['vocab_size']}: prepare the data with the model's tokenizer")
        return model
    if not os.path.exists(init_from):
        raise FileNotFoundError(f"base checkpoint {init_from} does not exist (pretrain one with "
                                f"python train.py config/demo_pretrain.toml)")
    ckpt = read(init_from)
    if ckpt["kind"] != "full":
        raise ValueError(f"{init_from} holds adapters only; a base must be a full checkpoint")
    if meta is not None:
        check_tokenizer(ckpt, init_from, meta, data_dir)
    return load_weights(GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout))), ckpt, init_from)


def base_of(ckpt, path, base=None, dropout=0.0):
    """The model a checkpoint's weights go into, before they do: for an adapter checkpoint its base (from
    the path it names, or from base, for a moved base), checked against the fingerprint; for a full one a
    GPT of its shape."""
    if ckpt["kind"] == "full":
        if base:
            raise ValueError(f"{path} is a full checkpoint: it has no base for base={base} to replace")
        return GPT(GPTConfig(**dict(ckpt["model_args"], dropout=dropout)))
    base_path = base or ckpt["base"]["init_from"]
    if not base and ckpt["base"].get("relative") and not os.path.exists(base_path):
        raise FileNotFoundError(f"{path} was trained on the base {base_path}, which does not exist: if it moved, "
                                f"pass its new path with --base=")
    model = load_base(base_path, dropout)
    if fingerprint(model) != ckpt["base"]["fingerprint"]:
        raise ValueError(f"{path} was trained on a base with fingerprint {ckpt['base']['fingerprint']}, but "
                         f"{base_path} has {fingerprint(model)}: not the same base model")
    return model


def load_weights(model, ckpt, path="the checkpoint"):
    """Put a checkpoint's weights into a model built for it (base_of, then the same adapters injected)."""
    try:
        if ckpt["kind"] == "adapter":
            return moelora.load_adapter_state_dict(model, ckpt["model"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as e:  # names or shapes that do not fit
        raise ValueError(f"{path}: its weights do not fit the model they belong to ({_one_line(e)[:400]})") from None
    return model


def load_checkpoint(path, base=None, dropout=0.0, data_dir=None):
    """(model, checkpoint) from a ckpt.pt: a full model, or its base with the adapters injected and loaded.
    base overrides the base path an adapter checkpoint names (for a moved base); its fingerprint must match.
    data_dir: the data the model is for, checked to share its tokenizer (default: the data it was trained on,
    when that is there; ckpt["data"]["data_dir"] is its path)."""
    ckpt = read(path)
    if data_dir is not None or os.path.isfile(os.path.join(ckpt["data"]["data_dir"], "meta.json")):
        data_dir = data_dir or ckpt["data"]["data_dir"]
        check_tokenizer(ckpt, path, read_meta(data_dir), data_dir)
    model = base_of(ckpt, path, base, dropout)
    if ckpt["kind"] == "adapter":
        moelora.inject(model, moelora.AdapterConfig(**ckpt["adapter"]))
    return load_weights(model, ckpt, path), ckpt


def _one_line(error):
    return " ".join(str(error).split())


# ----------------------------------------------------------------------------------------------------
# writing

def training_state(model, optimizer, cfg, step, best_val, base, data_meta):
    """Everything a resumed run needs, as the dict save_checkpoint writes. model is the raw module (never
    the compiled or DDP wrapper); base is None for a full checkpoint, else {"init_from", "fingerprint"}.
    Weights that are not finite are refused: the checkpoint they would replace is the last good one."""
    adapters_only = base is not None
    weights = moelora.adapter_state_dict(model) if adapters_only else model.state_dict()
    broken = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise FloatingPointError(f"the weights after step {step} are not finite ({', '.join(broken[:3])}): not "
                                 f"saving them over the last good checkpoint in {cfg.out_dir}; try a lower lr "
                                 f"or dtype=float32, then init_from=resume")
    here = os.path.abspath(cfg.out_dir)  # paths are stored relative to it too
    shape = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
    return {
        "kind": "adapter" if adapters_only else "full",
        "model": weights,
        "model_args": dataclasses.asdict(model.config),
        "adapter": dataclasses.asdict(cfg.adapter) if adapters_only else None,
        "base": dict(zip(("init_from", "relative"), _portable(base["init_from"], here)),
                     fingerprint=base["fingerprint"]) if adapters_only else None,
        "optimizer": optimizer.state_dict(),
        "config": dict(dataclasses.asdict(cfg), **shape),  # the shape the model has, whatever was asked
        "iter_num": step,
        "best_val_loss": best_val,
        "rng": rng_state(),
        "data": dict(zip(("data_dir", "relative"), _portable(cfg.data_dir, here)),
                     tokenizer=data_meta.get("tokenizer"), tokenizer_hash=data_meta.get("tokenizer_hash"),
                     vocab_size=data_meta["vocab_size"]),
    }


def _portable(path, directory):
    """(absolute path, path relative to directory) of a local file or directory; (name, None) for a name."""
    if not os.path.exists(path):
        return path, None
    return os.path.abspath(path), os.path.relpath(os.path.abspath(path), directory)


def save_checkpoint(path, state):
    """Write to a temporary file of this save's own name, flush it to disk, then rename: the old checkpoint
    stays until the new one is complete, so a crash, a kill or a full disk mid-save never leaves a corrupt
    ckpt.pt; a failed save removes its temporary file."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # torch's writer reports a full disk as a RuntimeError
            raise OSError(f"could not write {path} ({_one_line(e)}); the checkpoint there before, if any, is "
                          f"intact") from e
        raise
    with contextlib.suppress(OSError):  # the rename itself, on disk
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


class OutDirLock:
    """out_dir/train.lock, held (flock) while a run writes to out_dir. The system lets go of it when the
    process ends, however it ends, so a killed run's lock is stale and the next run simply takes it over.

    Taking it refuses when another run holds it, or when a new run (resuming=False) would write over the
    checkpoint of one that is there; it removes the temporary files that saves of a killed run left."""

    def __init__(self, out_dir, resuming):
        os.makedirs(out_dir, exist_ok=True)
        self.file = open(os.path.join(out_dir, LOCK_FILE), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise OSError(f"{out_dir} is in use by another run ({holder}): wait for it to end, or pick another "
                          f"out_dir") from None
        self.file.seek(0)
        if stale := self.file.read().strip():
            print(f"note: taking over {out_dir}'s lock from a run that did not end cleanly ({stale})", file=sys.stderr)
        if not resuming and os.path.exists(os.path.join(out_dir, "ckpt.pt")):
            self.release()
            raise OSError(f"{out_dir} already holds a run's checkpoint: continue it with --init_from=resume, pick "
                          f"another out_dir, or delete {os.path.join(out_dir, 'ckpt.pt')} to start over")
        for pattern in ("ckpt.pt*.tmp", "log.jsonl*.tmp"):  # what writes a killed run left unfinished
            for tmp in glob.glob(os.path.join(glob.escape(out_dir), pattern)):
                os.remove(tmp)
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()

    def release(self):
        if not self.file.closed:
            self.file.truncate(0)  # a lock file with a holder in it is one a run never released
            self.file.close()


# ----------------------------------------------------------------------------------------------------

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
