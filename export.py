"""
Adapters to and from files of the Hugging Face ecosystem: a LoRA in peft's format, any adapter in ours.

    python export.py --ckpt=out/x/ckpt.pt --out=DIR                    # a LoRA, for peft
    python export.py --ckpt=out/x/ckpt.pt --out=DIR --format=moelora   # a MoELoRA (or a LoRA), for us

peft's format, LoRA only: DIR/adapter_config.json and DIR/adapter_model.safetensors, which
    PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), DIR)
turns into Hugging Face's GPT-2 with our LoRA, giving our logits. Our module names are nanoGPT's, which are
Hugging Face's (transformer.h.N.attn.c_attn, ...), so a layer's LoRA is stored as peft stores it:
base_model.model.<name>.lora_A.weight (r, d_in) and .lora_B.weight (d_out, r), the weights of peft's
nn.Linear(d_in, r) and nn.Linear(r, d_out), and exactly our lora_A and lora_B. Hugging Face's GPT-2 layers
are Conv1D (weight stored (d_in, d_out)); peft reads d_in and d_out from that and wants fan_in_fan_out=True,
which only changes how it merges B A into the weight, not the forward, y = W x + b + alpha / r * B A x.
load_peft reads such a directory into our GPT (one peft wrote, too): the tensors say which layers.

MoELoRA has no peft format: peft's mixtures of LoRAs (X-LoRA, Poly, Arrow) mix whole adapters by rules of
their own, and none has MoELoRA's router in each layer (top-k of softmax(W_g x) over that layer's experts).
Its adapters (a LoRA's too) go into our format: DIR/moelora_config.json (the AdapterConfig fields, and the
base the checkpoint names) and DIR/moelora_model.safetensors (moelora.adapter_state_dict), read back by
load_moelora, which checks that the model it loads them into is that base (by its fingerprint).

From Python:
    model = GPT.from_pretrained("path/to/gpt2"); load_peft(model, DIR)     # or load_moelora(model, DIR)

safetensors is the optional 'hf' extra: pip install -e '.[hf]'. The format follows peft 0.21's source
(peft/utils/save_and_load.py, peft/tuners/lora/layer.py); tests/test_export.py writes down what it expects.
"""

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

import cli
import moelora
from checkpoint import fingerprint, load_checkpoint

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MOELORA_CONFIG, MOELORA_WEIGHTS = "moelora_config.json", "moelora_model.safetensors"
# peft wraps the model twice (PeftModel.base_model is a LoraModel, whose .model is GPT2LMHeadModel)
PEFT_PREFIX = "base_model.model."
# adapter_config.json keys load_peft reads, and those that change nothing once the weights are loaded (where
# the LoRA goes, which the tensors say too; how it was initialised; bookkeeping). Any other key must be off.
PEFT_READ = {"peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora"}
PEFT_INERT = {"base_model_name_or_path", "revision", "task_type", "inference_mode", "peft_version", "auto_mapping",
              "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "fan_in_fan_out",
              "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
              "megatron_config", "megatron_core", "qalora_group_size", "ensure_weight_tying"}
OFF = (None, False, {}, [], "none")


# ----------------------------------------------------------------------------------------------------------
# peft's format (LoRA)

def save_peft(model, cfg, out_dir, base=None):
    """Write the model's LoRA layers (moelora.LoRALinear, injected with the AdapterConfig cfg) in peft's format.
    base: the base the checkpoint names ({"init_from": ...}), written as base_model_name_or_path."""
    if cfg.kind != "lora" or any(isinstance(m, moelora.MoELoRALinear) for m in model.modules()):
        raise ValueError("MoELoRA has no peft format (no peft method has its router in each layer): "
                         "export it with --format=moelora")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, moelora.LoRALinear)}
    if not layers:
        raise ValueError("the model has no LoRA layers to export")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A  # (r, d_in)
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B  # (d_out, r)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": (base or {}).get("init_from"),
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": peft_targets(model, layers),
        "fan_in_fan_out": True, "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "inference_mode": True,
    }
    return _write(out_dir, PEFT_CONFIG, config, PEFT_WEIGHTS, tensors)


def peft_targets(model, layers):
    """target_modules for peft, which adapts a module whose name is an entry or ends with "." + an entry: the
    short names ("attn.c_attn") when they pick exactly these layers among the model's linear layers, else the
    full names."""
    wrapped = {name + ".base" for name in layers}  # the nn.Linear inside each LoRALinear
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in wrapped]
    short = sorted({".".join(name.split(".")[-2:]) for name in layers})
    picked = [name for name in [*linears, *layers] if any(name == s or name.endswith("." + s) for s in short)]
    return short if sorted(picked) == sorted(layers) else sorted(layers)


def load_peft(model, directory):
    """Inject and load a peft LoRA directory (as save_peft or peft's save_pretrained on GPT2LMHeadModel write
    it) into our GPT. Returns (model, the AdapterConfig it was injected with)."""
    directory = Path(directory)
    config = _read_json(directory / PEFT_CONFIG, "a peft adapter directory")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory / PEFT_CONFIG}: peft_type {config.get('peft_type')!r}; only LoRA loads here")
    options = [f"{k}={v!r}" for k, v in config.items() if k not in PEFT_READ | PEFT_INERT and v not in OFF]
    if options:
        raise ValueError(f"{directory / PEFT_CONFIG}: {', '.join(options)}: not a plain LoRA, which is all that "
                         f"LoRALinear computes")
    state, names = {}, set()
    for key, value in _load_tensors(directory / PEFT_WEIGHTS).items():
        name, _, kind = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")  # "transformer.h.0.attn.c_attn", "A.weight"
        if not key.startswith(PEFT_PREFIX) or kind not in ("A.weight", "B.weight"):
            raise ValueError(f"{directory / PEFT_WEIGHTS}: tensor {key} is not a plain LoRA's "
                             f"({PEFT_PREFIX}<module>.lora_A.weight or .lora_B.weight)")
        state[f"{name}.lora_{kind[0]}"] = value
        names.add(name)
    r = config.get("r", 8)  # peft's LoraConfig defaults, for a file that leaves them out
    # rsLoRA scales by alpha / sqrt(r), LoRALinear by alpha / r
    alpha = config.get("lora_alpha", 8) * (math.sqrt(r) if config.get("use_rslora") else 1)
    cfg = moelora.AdapterConfig(kind="lora", r=r, alpha=alpha, dropout=config.get("lora_dropout", 0.0),
                                targets=tuple(sorted(names)))
    moelora.inject(model, cfg)
    moelora.load_adapter_state_dict(model, state)
    return model, cfg


# ----------------------------------------------------------------------------------------------------------
# Our format (MoELoRA, or any adapter)

def save_moelora(model, cfg, out_dir, base=None):
    """Write the model's adapters and their AdapterConfig cfg (and the base the checkpoint names) in our format."""
    info = {"format": "moelora", "adapter": dataclasses.asdict(cfg), "base": base}
    return _write(out_dir, MOELORA_CONFIG, info, MOELORA_WEIGHTS, moelora.adapter_state_dict(model))


def load_moelora(model, directory):
    """Inject and load adapters written by save_moelora into a GPT, which must be the base they were trained on
    when the file names its fingerprint. Returns (model, AdapterConfig)."""
    directory = Path(directory)
    info = _read_json(directory / MOELORA_CONFIG, "an adapter directory of ours (export.py --format=moelora)")
    try:
        cfg = moelora.AdapterConfig(**info["adapter"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{directory / MOELORA_CONFIG}: not an AdapterConfig ({e})") from None
    expected = (info.get("base") or {}).get("fingerprint")
    if expected is not None and fingerprint(model) != expected:
        raise ValueError(f"{directory / MOELORA_CONFIG}: the adapters were trained on a base with fingerprint "
                         f"{expected}, this model has {fingerprint(model)}")
    moelora.inject(model, cfg)
    moelora.load_adapter_state_dict(model, _load_tensors(directory / MOELORA_WEIGHTS))
    return model, cfg


# ----------------------------------------------------------------------------------------------------------
# Files

def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("adapter files are safetensors files: pip install safetensors "
                          "(or pip install -e '.[hf]')") from None
    return safetensors.torch


def _write(out_dir, config_name, config, weights_name, tensors):
    """The config as JSON and the tensors as safetensors in out_dir; returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # "format": "pt" as torch's safetensors files carry it (peft's and transformers' included)
    _safetensors().save_file(tensors, str(out_dir / weights_name), metadata={"format": "pt"})
    (out_dir / config_name).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir / config_name, out_dir / weights_name


def _read_json(path, what):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected {what}")
    return json.loads(path.read_text())


def _load_tensors(path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return _safetensors().load_file(str(path))


# ----------------------------------------------------------------------------------------------------------

@dataclass
class ExportConfig:
    ckpt: str = ""  # an adapter checkpoint of train.py (out/x/ckpt.pt)
    out: str = ""  # the directory to write
    format: str = "peft"  # "peft" (LoRA only) | "moelora" (ours, any adapter)
    base: str = ""  # the base model, when it moved from where the checkpoint says


SAVERS = {"peft": save_peft, "moelora": save_moelora}


def main(argv=None):
    cfg = cli.parse(ExportConfig, argv)
    if not cfg.ckpt or not cfg.out:
        raise ValueError("export needs --ckpt=out/x/ckpt.pt and --out=DIR")
    if cfg.format not in SAVERS:
        raise ValueError(f"--format is one of {', '.join(SAVERS)}, not {cfg.format!r}")
    model, ckpt = load_checkpoint(cfg.ckpt, base=cfg.base or None)
    if ckpt["kind"] != "adapter":
        raise ValueError(f"{cfg.ckpt} holds a full model, not adapters: there is nothing to export")
    paths = SAVERS[cfg.format](model, moelora.AdapterConfig(**ckpt["adapter"]), cfg.out, base=ckpt["base"])
    print(f"wrote {' and '.join(map(str, paths))}")
    return paths


if __name__ == "__main__":
    try:
        main()
    except (cli.ConfigError, FileNotFoundError, ImportError, ValueError) as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        sys.exit(1)
