"""export.py: LoRA to and from peft's format, MoELoRA to and from ours, and the command line. Where peft and
transformers are installed, Hugging Face's GPT-2 with the exported LoRA gives our logits, and a LoRA peft made
gives peft's logits here.

    python -m pytest tests/test_export.py -q
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import checkpoint
import export
import model
import moelora
from test_model import HF_CONFIG, hf_tensors, write_checkpoint

pytest.importorskip("safetensors", reason="safetensors is the optional 'hf' extra")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, L = HF_CONFIG["n_embd"], HF_CONFIG["n_layer"]
LORA = moelora.AdapterConfig(kind="lora", r=4, alpha=6.0, dropout=0.1, targets=("attn.c_attn", "attn.c_proj", "c_fc"))
MOELORA = moelora.AdapterConfig(kind="moelora", r=2, alpha=3.0, n_experts=4, top_k=2, targets=("c_attn", "mlp.c_proj"))


@pytest.fixture
def base_dir(tmp_path):
    """A tiny random GPT-2 in Hugging Face's layout (config.json + model.safetensors)."""
    return str(write_checkpoint(tmp_path / "gpt2-tiny", hf_tensors(), "safetensors"))


def adapted(base_dir, cfg, seed=0):
    """Our GPT from base_dir with cfg's adapters, every adapter weight random (B nonzero), in eval mode."""
    m = moelora.inject(model.GPT.from_pretrained(base_dir), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if moelora.is_adapter_param(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def tokens(seed=1):
    return torch.randint(0, HF_CONFIG["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(seed))


def logits(m, idx):
    with torch.no_grad():
        return m(idx)[0]


# ----------------------------------------------------------------------------------------------------------
# Round trips through the files, ours -> files -> ours

@pytest.mark.parametrize("cfg,save,load", [(LORA, export.save_peft, export.load_peft),
                                           (LORA, export.save_moelora, export.load_moelora),
                                           (MOELORA, export.save_moelora, export.load_moelora)])
def test_round_trip_gives_the_same_logits(tmp_path, base_dir, cfg, save, load):
    ours = adapted(base_dir, cfg)
    base = {"init_from": base_dir, "fingerprint": checkpoint.fingerprint(model.GPT.from_pretrained(base_dir))}
    save(ours, cfg, tmp_path / "adapter", base=base)
    loaded, loaded_cfg = load(model.GPT.from_pretrained(base_dir), tmp_path / "adapter")
    idx = tokens()
    assert not torch.equal(logits(ours, idx), logits(model.GPT.from_pretrained(base_dir).eval(), idx))
    assert torch.equal(logits(loaded.eval(), idx), logits(ours, idx))
    assert moelora.adapter_state_dict(loaded).keys() == moelora.adapter_state_dict(ours).keys()
    if save is export.save_moelora:
        assert loaded_cfg == cfg
    else:  # peft's format names the layers one by one
        assert (loaded_cfg.r, loaded_cfg.alpha, loaded_cfg.dropout) == (cfg.r, cfg.alpha, cfg.dropout)


# ----------------------------------------------------------------------------------------------------------
# What peft expects, as read in peft 0.21's source:
#   - files: adapter_config.json, adapter_model.safetensors (peft/utils/constants.py CONFIG_NAME,
#     SAFETENSORS_WEIGHTS_NAME), saved with metadata {"format": "pt"} (peft_model.py save_pretrained)
#   - keys: the PeftModel's state-dict keys of the LoRA layers, "base_model.model.<module>.lora_A.default.weight",
#     with the adapter name taken out (tuners_utils._remove_adapter_name_from_state_dict_key):
#     base_model.model.transformer.h.N.attn.c_attn.lora_A.weight; nothing else for bias="none", no DoRA, no
#     modules_to_save
#   - shapes: a Conv1D's in_features, out_features = weight.shape, which Conv1D stores (in, out)
#     (tuners_utils._get_in_out_features); lora_A = nn.Linear(in_features, r), lora_B = nn.Linear(r,
#     out_features), no biases (lora/layer.py update_layer): A.weight (r, in), B.weight (out, r)
#   - config: peft_type "LORA"; r; lora_alpha, scaling = lora_alpha / r (use_rslora false); target_modules, a
#     list: a module is adapted when its name is in the list or ends with "." + an entry
#     (tuners_utils.check_target_module_exists); fan_in_fan_out true for Conv1D (lora/layer.py warns and sets
#     it otherwise); forward: result + lora_B(lora_A(dropout(x))) * scaling (lora/layer.py Linear.forward)

def hf_gpt2_linear_layers():
    """The names of Hugging Face GPT2LMHeadModel's Conv1D and Linear modules, with their (in, out)."""
    layers = {"lm_head": (C, HF_CONFIG["vocab_size"])}
    for i in range(L):
        layers.update({f"transformer.h.{i}.attn.c_attn": (C, 3 * C), f"transformer.h.{i}.attn.c_proj": (C, C),
                       f"transformer.h.{i}.mlp.c_fc": (C, 4 * C), f"transformer.h.{i}.mlp.c_proj": (4 * C, C)})
    return layers


def peft_selects(target_modules, name):
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


@pytest.mark.parametrize("targets,short", [
    (("attn.c_attn", "attn.c_proj", "c_fc"), ["attn.c_attn", "attn.c_proj", "mlp.c_fc"]),
    (("c_proj",), ["attn.c_proj", "mlp.c_proj"]),
    (("transformer.h.1.attn.c_attn",), None),  # one layer of two: the full name
])
def test_peft_files_are_what_peft_expects(tmp_path, base_dir, targets, short):
    cfg = dataclasses.replace(LORA, targets=targets)
    export.save_peft(adapted(base_dir, cfg), cfg, tmp_path / "peft", base={"init_from": base_dir})
    assert sorted(os.listdir(tmp_path / "peft")) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "fan_in_fan_out",
                                   "bias", "use_rslora", "use_dora", "modules_to_save", "base_model_name_or_path")} \
        == {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 6.0, "lora_dropout": 0.1,
            "fan_in_fan_out": True, "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
            "base_model_name_or_path": base_dir}
    adapted_layers = {n: io for n, io in hf_gpt2_linear_layers().items() if any(moelora.matches(n, t) for t in targets)}
    assert config["target_modules"] == (short or sorted(adapted_layers))
    assert {n for n in hf_gpt2_linear_layers() if peft_selects(config["target_modules"], n)} == set(adapted_layers)
    with safe_open(str(tmp_path / "peft" / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    expected = {}
    for name, (d_in, d_out) in adapted_layers.items():
        expected[f"base_model.model.{name}.lora_A.weight"] = (4, d_in)
        expected[f"base_model.model.{name}.lora_B.weight"] = (d_out, 4)
    assert shapes == expected


def test_our_format_refuses_another_base(tmp_path, base_dir):
    other = str(write_checkpoint(tmp_path / "other", hf_tensors(seed=1), "safetensors"))
    base = {"init_from": base_dir, "fingerprint": checkpoint.fingerprint(model.GPT.from_pretrained(base_dir))}
    export.save_moelora(adapted(base_dir, MOELORA), MOELORA, tmp_path / "ours", base=base)
    with pytest.raises(ValueError, match="trained on a base with fingerprint"):
        export.load_moelora(model.GPT.from_pretrained(other), tmp_path / "ours")


def test_without_safetensors_the_error_says_what_to_install(tmp_path, base_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import safetensors.torch fails
    with pytest.raises(ImportError, match=r"pip install safetensors \(or pip install -e '.\[hf\]'\)"):
        export.save_moelora(adapted(base_dir, MOELORA), MOELORA, tmp_path / "ours")


def test_moelora_has_no_peft_format(tmp_path, base_dir):
    with pytest.raises(ValueError, match="MoELoRA has no peft format .*--format=moelora"):
        export.save_peft(adapted(base_dir, MOELORA), MOELORA, tmp_path / "peft")


@pytest.mark.parametrize("change,words", [
    ({"use_dora": True}, "use_dora=True: not a plain LoRA"),
    ({"rank_pattern": {"c_attn": 8}}, "rank_pattern="),
    ({"bias": "all"}, "bias='all'"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'; only LoRA"),
])
def test_peft_options_we_do_not_compute_are_refused(tmp_path, base_dir, change, words):
    export.save_peft(adapted(base_dir, LORA), LORA, tmp_path / "peft")
    path = tmp_path / "peft" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=words):
        export.load_peft(model.GPT.from_pretrained(base_dir), tmp_path / "peft")


def test_peft_tensors_other_than_lora_are_refused(tmp_path, base_dir):
    export.save_peft(adapted(base_dir, LORA), LORA, tmp_path / "peft")
    path = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector"] = torch.ones(3 * C)
    from safetensors.torch import save_file
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="lora_magnitude_vector is not a plain LoRA's"):
        export.load_peft(model.GPT.from_pretrained(base_dir), tmp_path / "peft")


# ----------------------------------------------------------------------------------------------------------
# With peft and transformers: Hugging Face's side of the files

def hf_model(base_dir):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not a dependency)")
    return transformers.GPT2LMHeadModel.from_pretrained(base_dir).eval()


def test_peft_loads_our_lora_with_our_logits(tmp_path, base_dir):
    peft = pytest.importorskip("peft", reason="peft is not installed (not a dependency)")
    ours = adapted(base_dir, LORA)
    export.save_peft(ours, LORA, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(hf_model(base_dir), str(tmp_path / "peft")).eval()
    idx = tokens()
    with torch.no_grad():
        hf_logits = theirs(idx).logits
        base_logits = hf_model(base_dir)(idx).logits
    print("max abs difference, peft vs ours:", (hf_logits - logits(ours, idx)).abs().max().item())
    assert (hf_logits - base_logits).abs().max() > 0.1  # the LoRA is there and matters
    torch.testing.assert_close(hf_logits, logits(ours, idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    {"target_modules": ["c_attn", "c_proj"]},
    {"target_modules": ["c_fc"], "layers_to_transform": [1], "use_rslora": True, "lora_alpha": 5},
])
def test_a_lora_peft_made_loads_with_its_logits(tmp_path, base_dir, options):
    peft = pytest.importorskip("peft", reason="peft is not installed (not a dependency)")
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "fan_in_fan_out": True,
                                "task_type": "CAUSAL_LM", **options})
    theirs = peft.get_peft_model(hf_model(base_dir), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    theirs.save_pretrained(str(tmp_path / "peft"))
    ours, cfg = export.load_peft(model.GPT.from_pretrained(base_dir), tmp_path / "peft")
    idx = tokens()
    with torch.no_grad():
        hf_logits = theirs.eval()(idx).logits
    print("max abs difference, ours vs peft:", (logits(ours.eval(), idx) - hf_logits).abs().max().item())
    torch.testing.assert_close(logits(ours, idx), hf_logits, rtol=1e-5, atol=1e-5)
    scaling = options.get("lora_alpha", 8) / (math.sqrt(4) if options.get("use_rslora") else 4)
    assert all(m.scaling == pytest.approx(scaling) for m in ours.modules() if isinstance(m, moelora.LoRALinear))


# ----------------------------------------------------------------------------------------------------------
# The command line

def adapter_checkpoint(path, base_dir, cfg):
    """A ckpt.pt as train.py writes one for fine-tuned adapters (the keys checkpoint.load_checkpoint reads)."""
    m = adapted(base_dir, cfg)
    base = model.GPT.from_pretrained(base_dir)
    checkpoint.save_checkpoint(str(path), {"kind": "adapter", "model": moelora.adapter_state_dict(m),
                                      "model_args": dataclasses.asdict(m.config), "adapter": dataclasses.asdict(cfg),
                                      "base": {"init_from": base_dir, "fingerprint": checkpoint.fingerprint(base)},
                                      # what resuming would need; export reads none of it
                                      "optimizer": {}, "config": {}, "iter_num": 0, "rng": {}, "data": {"data_dir": str(path.parent)}})
    return m


def test_command_line_exports_a_checkpoint(tmp_path, base_dir, capsys):
    ours = adapter_checkpoint(tmp_path / "lora.pt", base_dir, LORA)
    export.main([f"--ckpt={tmp_path / 'lora.pt'}", f"--out={tmp_path / 'peft'}"])
    assert "adapter_model.safetensors" in capsys.readouterr().out
    loaded, _ = export.load_peft(model.GPT.from_pretrained(base_dir), tmp_path / "peft")
    assert torch.equal(logits(loaded.eval(), tokens()), logits(ours, tokens()))
    ours = adapter_checkpoint(tmp_path / "moelora.pt", base_dir, MOELORA)
    export.main([f"--ckpt={tmp_path / 'moelora.pt'}", f"--out={tmp_path / 'ours'}", "--format=moelora"])
    loaded, cfg = export.load_moelora(model.GPT.from_pretrained(base_dir), tmp_path / "ours")
    assert cfg == MOELORA and torch.equal(logits(loaded.eval(), tokens()), logits(ours, tokens()))
    info = json.loads((tmp_path / "ours" / "moelora_config.json").read_text())
    assert info["base"]["init_from"] == base_dir


@pytest.mark.parametrize("args,error,words", [
    (["--ckpt={moelora}", "--out={out}"], ValueError, "MoELoRA has no peft format"),
    (["--ckpt={out}/none.pt", "--out={out}"], FileNotFoundError, "checkpoint .*none.pt does not exist"),
    (["--ckpt={moelora}", "--out={out}", "--format=onnx"], ValueError, "--format is one of peft, moelora, not 'onnx'"),
    (["--out={out}"], ValueError, "export needs --ckpt=out/x/ckpt.pt and --out=DIR"),
    (["--colour=red"], export.cli.ConfigError, "unknown setting 'colour'"),
])
def test_command_line_errors(tmp_path, base_dir, args, error, words):
    adapter_checkpoint(tmp_path / "moelora.pt", base_dir, MOELORA)
    with pytest.raises(error, match=words):
        export.main([a.format(moelora=tmp_path / "moelora.pt", out=tmp_path / "out") for a in args])


def test_the_script_reports_an_error_in_one_line(tmp_path, base_dir):
    adapter_checkpoint(tmp_path / "moelora.pt", base_dir, MOELORA)
    run = subprocess.run([sys.executable, "export.py", f"--ckpt={tmp_path / 'moelora.pt'}", f"--out={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (1, "")
    assert re.fullmatch("error: MoELoRA has no peft format .*\n", run.stderr), run.stderr
