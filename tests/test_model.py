"""GPT-2 in model.py: loading Hugging Face checkpoints exactly, the masked loss, cached batched decoding."""

import json
import math

import pytest
import torch

import model

HF_CONFIG = {"model_type": "gpt2", "n_positions": 32, "vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 16,
             "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}


def hf_tensors(cfg=HF_CONFIG, seed=0, prefix="transformer.", old_buffers=False):
    """Random GPT-2 weights named and shaped as Hugging Face saves them (Conv1D weights are (in, out))."""
    g = torch.Generator().manual_seed(seed)
    C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    t = {"wte.weight": rand(V, C), "wpe.weight": rand(cfg["n_positions"], C),
         "ln_f.weight": 1 + rand(C), "ln_f.bias": rand(C)}
    for i in range(L):
        p = f"h.{i}."
        t.update({p + "ln_1.weight": 1 + rand(C), p + "ln_1.bias": rand(C),
                  p + "attn.c_attn.weight": rand(C, 3 * C), p + "attn.c_attn.bias": rand(3 * C),
                  p + "attn.c_proj.weight": rand(C, C), p + "attn.c_proj.bias": rand(C),
                  p + "ln_2.weight": 1 + rand(C), p + "ln_2.bias": rand(C),
                  p + "mlp.c_fc.weight": rand(C, 4 * C), p + "mlp.c_fc.bias": rand(4 * C),
                  p + "mlp.c_proj.weight": rand(4 * C, C), p + "mlp.c_proj.bias": rand(C)})
        if old_buffers:  # early checkpoints stored the causal mask too
            t[p + "attn.bias"] = torch.tril(torch.ones(cfg["n_positions"], cfg["n_positions"]))[None, None]
    t = {prefix + k: v for k, v in t.items()}
    if prefix:
        t["lm_head.weight"] = t[prefix + "wte.weight"]
    return t


def independent_gpt2_logits(t, cfg, idx):
    """GPT-2's forward pass written directly on Hugging Face's tensors, nothing shared with model.py."""
    t = {k.removeprefix("transformer."): v.double() for k, v in t.items()}
    C, H = cfg["n_embd"], cfg["n_head"]
    T = idx.shape[1]

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg["layer_norm_epsilon"]) * t[name + ".weight"] + t[name + ".bias"]

    def conv1d(x, name):  # Hugging Face's Conv1D: x @ W + b with W stored (in, out)
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    h = t["wte.weight"][idx] + t["wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        q, k, v = conv1d(ln(h, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        heads = lambda z: z.view(*z.shape[:2], H, C // H).transpose(1, 2)  # noqa: E731
        att = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(C // H)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ heads(v)).transpose(1, 2).reshape(*h.shape)
        h = h + conv1d(y, p + "attn.c_proj")
        h = h + conv1d(gelu_new(conv1d(ln(h, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(h, "ln_f") @ t["wte.weight"].T


def write_checkpoint(directory, tensors, fmt, cfg=HF_CONFIG):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        from safetensors.torch import save_file
        # safetensors refuses tensors sharing memory, as Hugging Face's tied lm_head does: save it apart
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    else:
        torch.save(tensors, directory / "pytorch_model.bin")
    return directory


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("prefix,old_buffers", [("transformer.", False), ("", True)])
def test_from_pretrained_matches_independent_forward(tmp_path, fmt, prefix, old_buffers):
    if fmt == "safetensors":
        pytest.importorskip("safetensors", reason="safetensors is the optional 'hf' extra")
    tensors = hf_tensors(prefix=prefix, old_buffers=old_buffers)
    m = model.GPT.from_pretrained(str(write_checkpoint(tmp_path / "ckpt", tensors, fmt))).eval()
    idx = torch.randint(0, HF_CONFIG["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    logits, _ = m(idx)
    expected = independent_gpt2_logits(tensors, HF_CONFIG, idx)
    print("max abs error vs float64:", (logits.double() - expected).abs().max().item())
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)


def test_from_pretrained_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (it is on the GPU box)")
    tensors = hf_tensors()
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, "bin")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(ckpt)).eval()
    ours = model.GPT.from_pretrained(str(ckpt)).eval()
    idx = torch.randint(0, HF_CONFIG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage,words", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensors .*h.1.mlp.c_fc.bias"),
    (lambda t: t.update({"transformer.h.0.attn.q_proj.weight": torch.zeros(2)}), "unexpected tensors .*q_proj"),
    (lambda t: t.update({"transformer.h.0.attn.c_proj.weight": torch.zeros(16, 15)}),
     r"h.0.attn.c_proj.weight has shape \(16, 15\), expected \(16, 16\)"),
])
def test_malformed_checkpoint_errors(tmp_path, damage, words):
    tensors = hf_tensors()
    damage(tensors)
    ckpt = write_checkpoint(tmp_path / "ckpt", tensors, "bin")
    with pytest.raises(ValueError, match=words):
        model.GPT.from_pretrained(str(ckpt))


def test_missing_files_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model.GPT.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        model.GPT.from_pretrained(str(tmp_path / "empty"))
    # a name that is not a directory: offline, the error says where to put the files
    with pytest.raises(FileNotFoundError, match="put its config.json"):
        model.GPT.from_pretrained(str(tmp_path / "no-such-model"))
    bad = dict(HF_CONFIG, activation_function="relu")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="activation_function"):
        model.GPT.from_pretrained(str(tmp_path / "empty"))


# --------------------------------------------------------------------------------------------------
# loss and decoding

def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=40, block_size=48)
    cfg.update(kw)
    return model.GPT(model.GPTConfig(**cfg)).eval()


def test_loss_mask_averages_over_counted_tokens():
    m = tiny()
    g = torch.Generator().manual_seed(0)
    idx, targets = torch.randint(0, 40, (3, 10), generator=g), torch.randint(0, 40, (3, 10), generator=g)
    mask = torch.rand(3, 10, generator=g) > 0.5
    logits, loss = m(idx, targets, loss_mask=mask)
    per_token = torch.nn.functional.cross_entropy(logits.view(-1, 40), targets.view(-1), reduction="none")
    torch.testing.assert_close(loss, per_token[mask.view(-1)].mean())
    torch.testing.assert_close(m(idx, targets)[1], per_token.mean())
    assert m(idx, targets, loss_mask=torch.zeros(3, 10))[1].item() == 0.0


def greedy_without_cache(m, prompt, n):
    """The slow, obviously right way: rerun the whole sequence for every new token."""
    idx = torch.tensor([prompt])
    for _ in range(n):
        idx = torch.cat([idx, m(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt):].tolist()


def test_generate_batch_equals_one_at_a_time_without_cache():
    m = tiny()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 40, (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5)]
    batched = m.generate_batch(prompts, max_new_tokens=8)
    for p, out in zip(prompts, batched):
        assert out == greedy_without_cache(m, p, 8)


def test_generate_batch_stops_at_stop_token():
    m = tiny()
    prompts = [[1, 2, 3], [4, 5]]
    full = m.generate_batch(prompts, max_new_tokens=10)
    stop = full[0][2]  # a token the first sequence produces third
    cut = m.generate_batch(prompts, max_new_tokens=10, stop_token=stop)
    for f, c in zip(full, cut):
        assert c == (f[:f.index(stop)] if stop in f else f)


def test_generate_sampling_shapes_and_greedy_agreement():
    m = tiny()
    idx = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    greedy = m.generate(idx, 6, temperature=0.0)
    assert greedy.shape == (2, 10) and torch.equal(greedy[:, :4], idx)
    assert greedy[0, 4:].tolist() == greedy_without_cache(m, [1, 2, 3, 4], 6)
    torch.manual_seed(0)
    sampled = m.generate(idx, 6, temperature=1.0, top_k=5)
    assert sampled.shape == (2, 10)


def test_generation_respects_block_size():
    m = tiny(block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        m.generate_batch([[1] * 10], max_new_tokens=7)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_configure_optimizers_takes_trainable_only():
    m = tiny()
    for name, p in m.named_parameters():
        p.requires_grad_(name.endswith("ln_f.weight") or name.endswith("c_fc.weight"))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    params = [p for group in opt.param_groups for p in group["params"]]
    assert len(params) == 3 and all(p.requires_grad for p in params)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(m.transformer.h[i].mlp.c_fc.weight) for i in range(2)}
