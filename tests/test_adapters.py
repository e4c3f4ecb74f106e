"""LoRA and MoELoRA layers, the router, the auxiliary losses, injection and adapter state dicts."""

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

import model
import moelora

TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=32, dropout=0.0)
KINDS = {
    "lora": moelora.AdapterConfig(kind="lora", r=4, alpha=8.0, dropout=0.1),
    "moelora": moelora.AdapterConfig(kind="moelora", r=2, alpha=4.0, dropout=0.1, n_experts=4, top_k=2),
    "moelora_comoe": moelora.AdapterConfig(kind="moelora", r=2, alpha=4.0, n_experts=4, top_k=2,
                                           contrastive="comoe", targets=("attn.c_attn", "c_fc")),
}


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return model.GPT(model.GPTConfig(**TINY))


def randomize_adapters(m, seed=1):
    """Give B (zero at init) random values, so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if moelora.is_adapter_param(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def tokens(B=3, T=16, seed=0):
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# adapters in a model

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train_mode", [False, True])
def test_injected_model_equals_base_at_init(kind, train_mode):
    base = tiny_gpt()
    adapted = moelora.inject(copy.deepcopy(base), KINDS[kind])
    base.train(train_mode), adapted.train(train_mode)
    idx = tokens()
    torch.testing.assert_close(adapted(idx)[0], base(idx)[0], rtol=0, atol=0)


def test_inject_replaces_exactly_the_targets():
    m = moelora.inject(tiny_gpt(), moelora.AdapterConfig(kind="lora", targets=("attn.c_attn", "c_fc")))
    adapted = sorted(n for n, mod in m.named_modules() if isinstance(mod, moelora.LoRALinear))
    assert adapted == [f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn.c_attn", "mlp.c_fc")]
    glob = moelora.inject(tiny_gpt(), moelora.AdapterConfig(kind="lora", targets=("transformer.h.1.*.c_proj",)))
    assert sorted(n for n, mod in glob.named_modules() if isinstance(mod, moelora.LoRALinear)) == \
        ["transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]


def test_lora_merge_unmerge_round_trip():
    m = moelora.inject(tiny_gpt(), KINDS["lora"]).eval()
    randomize_adapters(m)
    idx = tokens()
    before = m(idx)[0]
    weights = {n: p.clone() for n, p in m.named_parameters() if n.endswith("base.weight")}
    layers = [mod for mod in m.modules() if isinstance(mod, moelora.LoRALinear)]
    for layer in layers:
        layer.merge()
    torch.testing.assert_close(m(idx)[0], before, rtol=0, atol=1e-6)
    for layer in layers:
        layer.unmerge()
    for n, p in m.named_parameters():
        if n.endswith("base.weight"):
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(m(idx)[0], before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_save_load_into_fresh_model(kind, tmp_path):
    trained = moelora.inject(tiny_gpt(), KINDS[kind]).eval()
    randomize_adapters(trained)
    path = tmp_path / "adapter.pt"
    torch.save(moelora.adapter_state_dict(trained), path)
    sd = torch.load(path, weights_only=True)
    assert all(moelora.is_adapter_param(k) for k in sd) and sd
    fresh = moelora.inject(tiny_gpt(), KINDS[kind]).eval()
    moelora.load_adapter_state_dict(fresh, sd)
    idx = tokens()
    torch.testing.assert_close(fresh(idx)[0], trained(idx)[0], rtol=0, atol=0)


def test_adapter_load_mismatch_errors():
    sd = moelora.adapter_state_dict(moelora.inject(tiny_gpt(), KINDS["moelora"]))
    other_rank = moelora.inject(tiny_gpt(), moelora.AdapterConfig(kind="moelora", r=3, n_experts=4, top_k=2))
    with pytest.raises(ValueError, match="shapes do not fit"):
        moelora.load_adapter_state_dict(other_rank, sd)
    other_targets = moelora.inject(tiny_gpt(), moelora.AdapterConfig(kind="moelora", r=2, n_experts=4,
                                                                      targets=("c_fc",)))
    with pytest.raises(ValueError, match="missing .*unexpected"):
        moelora.load_adapter_state_dict(other_targets, sd)
    with pytest.raises(ValueError, match="does not fit"):
        moelora.load_adapter_state_dict(tiny_gpt(), sd)


def test_only_adapters_trainable():
    m = moelora.mark_only_adapters_trainable(moelora.inject(tiny_gpt(), KINDS["moelora"]))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B", "router.weight")) for n in trainable)
    assert len(trainable) == 3 * 2 * 2  # 3 tensors x 2 targets x 2 layers


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_overfits_one_batch(kind):
    """A few hundred adapter steps memorise a batch; the base weights stay bit-identical."""
    torch.manual_seed(0)  # the adapters' initialisation, whatever the tests before this one drew
    base = tiny_gpt()
    # a random GPT's 0.02-std tied head caps the logits near +-0.6 after ln_f, so no adapter could make
    # a confident prediction; a trained model's head is larger, as this one now is
    torch.nn.init.normal_(base.lm_head.weight, std=0.25)
    cfg = dataclasses.replace(KINDS[kind], dropout=0.0, targets=("c_attn", "c_proj", "c_fc"))
    m = moelora.mark_only_adapters_trainable(moelora.inject(base, cfg))
    frozen = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
    idx = tokens(B=2, T=16, seed=3)
    x, y = idx[:, :-1], idx[:, 1:]
    opt = m.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    # at a constant rate the loss spikes now and then; the last 100 steps decay it to 0, so that the final
    # loss does not depend on whether a spike falls near the end
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (400 - step) / 100))
    for _ in range(400):
        _, loss = m(x, y)
        loss = loss + moelora.auxiliary_loss(moelora.collect_aux(m), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    m.eval()
    assert m(x, y)[1].item() < 0.3  # from 7.6
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"


# --------------------------------------------------------------------------------------------------
# the router

def test_router_picks_k_experts_with_gates_summing_to_one():
    torch.manual_seed(0)
    router = moelora.Router(16, n_experts=6, top_k=3)
    r = router(torch.randn(50, 16))
    assert ((r.gates > 0).sum(-1) == 3).all()
    assert torch.equal(r.gates > 0, r.chosen)
    torch.testing.assert_close(r.gates.sum(-1), torch.ones(50))
    # the chosen experts are the most probable ones
    assert (r.probs.masked_fill(~r.chosen, 2.0).min(-1).values >= r.probs.masked_fill(r.chosen, -1.0).max(-1).values).all()


def test_router_gradient_flows_from_output():
    torch.manual_seed(0)
    layer = moelora.MoELoRALinear(nn.Linear(16, 8), n_experts=4, top_k=2, r=2, alpha=2.0, contrastive="none")
    with torch.no_grad():
        layer.lora_B.normal_()
    layer(torch.randn(10, 16)).pow(2).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_router_subclass_changes_routing(monkeypatch):
    class SoftRouter(moelora.Router):  # every expert, weighted by the full softmax (LoRAMoE-style)
        def select(self, probs):
            return probs, torch.ones_like(probs, dtype=torch.bool)

    monkeypatch.setitem(moelora.ROUTERS, "soft", SoftRouter)
    cfg = moelora.AdapterConfig(kind="moelora", r=2, n_experts=4, top_k=1, router="soft", contrastive="none")
    m = moelora.inject(tiny_gpt(), cfg)
    m(tokens())
    layers = moelora.routing_stats(m)
    assert all(isinstance(mod.router, SoftRouter) for mod in m.modules() if isinstance(mod, moelora.MoELoRALinear))
    for stats in layers.values():
        torch.testing.assert_close(stats["load"], torch.full((4,), 0.25))  # every expert, every token


def test_bad_adapter_arguments():
    with pytest.raises(ValueError, match="top_k"):
        moelora.MoELoRALinear(nn.Linear(8, 8), n_experts=2, top_k=3, r=2, alpha=2.0)
    with pytest.raises(ValueError, match="rank"):
        moelora.MoELoRALinear(nn.Linear(8, 8), n_experts=2, top_k=1, r=0, alpha=2.0)
    with pytest.raises(ValueError, match="rank"):
        moelora.LoRALinear(nn.Linear(8, 8), r=-1, alpha=2.0)
    with pytest.raises(ValueError, match="top_k >= 2"):
        moelora.MoELoRALinear(nn.Linear(8, 8), n_experts=4, top_k=1, r=2, alpha=2.0, contrastive="comoe")
    with pytest.raises(ValueError, match="contrastive"):
        moelora.MoELoRALinear(nn.Linear(8, 8), n_experts=4, top_k=2, r=2, alpha=2.0, contrastive="simclr")
    with pytest.raises(ValueError, match="no module name matches"):
        moelora.inject(tiny_gpt(), moelora.AdapterConfig(targets=("attn.q_proj",)))
    with pytest.raises(ValueError, match="not an nn.Linear"):
        moelora.inject(tiny_gpt(), moelora.AdapterConfig(targets=("ln_1",)))
    with pytest.raises(ValueError, match="kind"):
        moelora.AdapterConfig(kind="adapter")
    with pytest.raises(ValueError, match="router must be one of"):
        moelora.MoELoRALinear(nn.Linear(8, 8), n_experts=4, top_k=2, r=2, alpha=2.0, router="hash")
    with pytest.raises(TypeError, match="nn.Linear"):
        moelora.LoRALinear(nn.Conv1d(2, 2, 1), r=2, alpha=2.0)


# --------------------------------------------------------------------------------------------------
# the auxiliary losses in a model (the losses themselves: test_losses.py)

def test_collect_aux_averages_layers():
    m = moelora.inject(tiny_gpt(), KINDS["moelora"]).train()
    m(tokens())
    aux = moelora.collect_aux(m)
    layers = [mod for mod in m.modules() if isinstance(mod, moelora.MoELoRALinear)]
    stats = moelora.routing_stats(m)
    assert len(stats) == len(layers) == 4 and set(aux) == {"balance", "contrastive"}
    torch.testing.assert_close(aux["balance"], torch.stack([l.aux_losses["balance"] for l in layers]).mean())
    for layer_stats in stats.values():
        torch.testing.assert_close(layer_stats["load"].sum(), torch.tensor(1.0))
        assert 0 <= layer_stats["entropy"] <= torch.log(torch.tensor(4.0)) + 1e-6
    m.eval()
    m(tokens())
    assert moelora.collect_aux(m)["contrastive"] is None  # computed in training only


# --------------------------------------------------------------------------------------------------
# parameter budgets

def test_equal_params_moelora_matches_lora():
    lora_cfg = moelora.AdapterConfig(kind="lora", r=16, alpha=32.0, targets=("c_attn", "c_proj", "c_fc"))
    moe_cfg = moelora.equal_params_moelora(lora_cfg, n_experts=8, top_k=2)
    assert (moe_cfg.r, moe_cfg.n_experts, moe_cfg.top_k, moe_cfg.targets) == (2, 8, 2, lora_cfg.targets)
    assert moe_cfg.alpha / moe_cfg.r == lora_cfg.alpha / lora_cfg.r
    lora = moelora.count_parameters(moelora.mark_only_adapters_trainable(moelora.inject(tiny_gpt(), lora_cfg)))
    moe = moelora.count_parameters(moelora.mark_only_adapters_trainable(moelora.inject(tiny_gpt(), moe_cfg)))
    assert moe["adapter"] == lora["adapter"] > 0
    assert lora["router"] == 0
    # router: E * d_in per adapted layer (c_attn, attn.c_proj, c_fc: d_in 32; mlp.c_proj: d_in 128), 2 layers
    assert moe["router"] == 2 * 8 * (32 + 32 + 32 + 128)
    assert moe["trainable"] == moe["adapter"] + moe["router"]
    assert moe["base"] == lora["base"]
    with pytest.raises(ValueError, match="cannot be split"):
        moelora.equal_params_moelora(moelora.AdapterConfig(kind="lora", r=6), n_experts=4, top_k=2)


class HalfSoftRouter(moelora.Router):
    """A routing idea that overrides select only: every expert, weighted by the softmax squared."""

    def select(self, probs):
        gates = probs ** 2
        return gates / gates.sum(-1, keepdim=True), torch.ones_like(probs, dtype=torch.bool)


class NoisyRouter(moelora.Router):
    """One that overrides forward: its logits are not W_g x, so they cannot come out of the experts' matmul."""

    def forward(self, x):
        return self.route(torch.nn.functional.linear(x, self.weight) + 1.0)


@pytest.mark.parametrize("router", [moelora.Router, HalfSoftRouter, NoisyRouter])
@pytest.mark.parametrize("training,dropout", [(True, 0.0), (False, 0.3), (True, 0.3)])
def test_router_in_the_down_projection_equals_router_then_op(router, training, dropout):
    # the reference path computes the router's logits as E more rows of x [A_cat; W_g]^T where it may
    # (same x for router and experts, the standard logits): the same routing, output and gradients
    torch.manual_seed(0)
    base = nn.Linear(12, 10).double().requires_grad_(False)
    layer = moelora.MoELoRALinear(base, 4, 2, 3, 6.0, dropout=dropout, contrastive="none", impl="ref").double()
    layer.router = router(12, 4, 2).double()
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.router.weight.normal_()
    layer.train(training)
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    fused = layer._router_joins_the_op(x)
    assert fused == (router is not NoisyRouter and (not training or dropout == 0))
    torch.manual_seed(1)
    y = layer(x)
    grads = torch.autograd.grad(y.pow(2).sum(), [x, layer.lora_A, layer.lora_B, layer.router.weight])
    # the same by hand: the router on x, then the op on dropout(x) (the same dropout mask: seed 1 again)
    torch.manual_seed(1)
    x2 = x.reshape(-1, 12)
    xd = layer.dropout(x2)
    routing = layer.router(x2)
    ref = base(x2) + moelora.moelora_ref(xd, layer.lora_A, layer.lora_B, routing.gates, layer.scaling)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), [x, layer.lora_A, layer.lora_B, layer.router.weight])
    torch.testing.assert_close(y.reshape(-1, 10), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer._step[0].probs, routing.probs, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
