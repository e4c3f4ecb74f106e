"""The auxiliary losses: the balance loss, and the contrastive losses computed in rank space (moelora.py)
against references that build every expert's output in d_out space, in float64, values and gradients.

Run: python -m pytest -q tests/test_losses.py
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import moelora


# --------------------------------------------------------------------------------------------------
# the references: the contrastive losses as moelora.py computed them before rank space (commit 8702c2f),
# from every expert's full output o = B_e A_e x, a (S, E, d_out) tensor

def expert_outputs_ref(x, A, B):
    """Every expert's unit-length output B_e A_e x for each token: (S, d_in) -> (S, E, d_out), float32.
    (The one change from 8702c2f: float64 inputs stay float64 rather than going through .float().)"""
    x, A, B = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (x, A, B))
    o = torch.einsum("erd,sd->ser", A, x)  # (S, E, r)
    o = torch.einsum("eor,ser->seo", B, o)  # (S, E, d_out)
    # at init B = 0, so o = 0: eps keeps the unit vectors (and their gradient) finite until B moves
    return F.normalize(o, dim=-1, eps=1e-6)


def contrastive_loss_expert_ref(x, A, B, chosen, tau, n_tokens, top_k):
    """moelora.contrastive_loss_expert, from the experts' outputs in d_out space."""
    keep = moelora._subsample(x.shape[0], n_tokens, x.device)[0]
    o = expert_outputs_ref(x[keep], A, B)  # (S, E, d_out)
    S, _, d_out = o.shape
    filled, expert = chosen[keep].float().topk(top_k, dim=1)  # (S, k): each token's chosen experts first
    z = o.gather(1, expert[:, :, None].expand(S, top_k, d_out)).reshape(S * top_k, d_out)  # (M, d_out)
    valid = filled.reshape(-1) > 0  # (M,) slots holding a chosen expert's output
    label = expert.reshape(-1)  # (M,) the expert of each slot
    self_pair = torch.eye(S * top_k, dtype=torch.bool, device=x.device)  # (M, M)
    others = valid[None, :] & ~self_pair  # (M, M) what each output is contrasted with
    positive = others & (label[:, None] == label[None, :])  # (M, M) the same expert on other tokens
    # an output with nothing to contrast keeps itself in the softmax, only to stay finite (it is no anchor)
    in_softmax = others | (self_pair & ~others.any(1, keepdim=True))
    sim = (z @ z.T / tau).masked_fill(~in_softmax, float("-inf"))  # (M, M)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (M, M)
    n_pos = positive.sum(1)  # (M,)
    anchor = valid & (n_pos > 0)  # (M,) chosen outputs with at least one positive
    # mean log-probability of each anchor's positives, then the mean over anchors
    per_anchor = torch.where(positive, log_prob, 0.0).sum(1) / n_pos.clamp(min=1)  # (M,)
    return -(per_anchor * anchor).sum() / anchor.sum().clamp(min=1)


def contrastive_loss_comoe_ref(x, A, B, chosen, tau, n_tokens, top_k=None):
    """moelora.contrastive_loss_comoe, from the experts' outputs in d_out space."""
    keep = moelora._subsample(x.shape[0], n_tokens, x.device)[0]
    o = expert_outputs_ref(x[keep], A, B)  # (S, E, d_out)
    mask = chosen[keep]  # (S, E)
    sim = torch.einsum("sad,sbd->sab", o, o) / tau  # (S, E, E): anchor a against expert b
    not_self = ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)  # (E, E)
    positive = mask[:, None, :] & not_self  # (S, E, E): b activated, b != a
    # exp(sim) <= exp(1 / tau), about 1.6e6 at tau = 0.07: no overflow in float32
    numerator = (sim.exp() * positive).sum(-1)  # (S, E)
    denominator = (sim.exp() * not_self).sum(-1) + 1e-3  # (S, E): P + N, every expert but the anchor
    loss = -(numerator / denominator).clamp(min=1e-30).log()  # (S, E)
    # the mean over (token, activated anchor) pairs, written with a mask: no routing-dependent shape
    return (loss * mask).sum() / mask.sum().clamp(min=1)


LOSSES = {"expert": (moelora.contrastive_loss_expert, contrastive_loss_expert_ref),
          "comoe": (moelora.contrastive_loss_comoe, contrastive_loss_comoe_ref)}


def random_case(N, E, r, k, d_in=6, d_out=5, seed=0, dtype=torch.float64):
    """x, A, B (requiring gradients) and a routing: each token chooses between 0 and k experts (most
    choose k), and the last expert is never chosen when E > k."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=g, dtype=dtype)
    A = torch.randn(E, r, d_in, generator=g, dtype=dtype)
    B = torch.randn(E, d_out, r, generator=g, dtype=dtype)
    logits = torch.randn(N, E, generator=g)
    if E > k:
        logits[:, -1] = -float("inf")  # an expert that no token chooses
    chosen = torch.zeros(N, E, dtype=torch.bool).scatter_(1, logits.topk(k, -1).indices, True)
    n_chosen = torch.randint(0, k + 1, (N,), generator=g).where(torch.rand(N, generator=g) < 0.3, k)
    rank = logits.argsort(-1, descending=True).argsort(-1)  # (N, E) 0 for a token's favourite
    chosen &= rank < n_chosen[:, None]  # fewer than k for some tokens, none for a few
    return x.requires_grad_(), A.requires_grad_(), B.requires_grad_(), chosen


def value_and_grads(loss_fn, x, A, B, chosen, tau, n_tokens, k, seed=0, autocast=False):
    """The loss and its gradients w.r.t. x, A, B, with the subsample drawn from torch's RNG at seed; also
    the RNG state after the call, to check that both implementations draw the same numbers. autocast:
    the forward under bfloat16 autocast, the backward outside it, as in train.py."""
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(x, A, B, chosen, tau, n_tokens, k)
    state = torch.get_rng_state()
    return (loss, *torch.autograd.grad(loss, (x, A, B), allow_unused=True)), state


def assert_same_as_ref(variant, x, A, B, chosen, tau, n_tokens, k):
    new, ref = LOSSES[variant]
    (ours, state_ours), (theirs, state_theirs) = (value_and_grads(f, x, A, B, chosen, tau, n_tokens, k)
                                                  for f in (new, ref))
    assert torch.equal(state_ours, state_theirs)  # the same subsample, and no extra draws
    for name, a, b in zip(("loss", "dx", "dA", "dB"), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{variant} {name}: {m}")


# --------------------------------------------------------------------------------------------------
# rank space equals d_out space, in float64

@pytest.mark.parametrize("variant", LOSSES)
@pytest.mark.parametrize("E,k", [(E, k) for E in (1, 2, 4, 8) for k in (1, 2, 3) if k <= E])
@pytest.mark.parametrize("r", [1, 3, 8])
@pytest.mark.parametrize("N", [1, 7, 40])  # the subsample keeps 16 tokens: below, and above where it draws
def test_contrastive_rank_space_equals_reference(variant, E, k, r, N):
    x, A, B, chosen = random_case(N, E, r, k, seed=1000 * k + 100 * E + 10 * r + N)
    assert_same_as_ref(variant, x, A, B, chosen, 0.3, 16, k)


@pytest.mark.parametrize("variant", LOSSES)
def test_layers_of_mixed_shapes_at_once_equal_each_alone(variant, monkeypatch):
    """contrastive_losses over layers of different d_in / d_out, interleaved (batched by shape inside),
    gives each layer the loss and gradients it gets alone on the same kept tokens."""
    shapes = [(6, 5), (4, 9), (6, 5), (3, 3), (4, 9)]
    cases = [random_case(30, 4, 2, 2, d_in=d_in, d_out=d_out, seed=i) for i, (d_in, d_out) in enumerate(shapes)]
    keep = torch.stack([torch.randperm(30, generator=torch.Generator().manual_seed(i))[:16] for i in range(5)])
    rows = iter([keep])
    monkeypatch.setattr(moelora, "_subsample", lambda *args: next(rows))
    xs, As, Bs, chosens = zip(*cases)
    together = moelora.contrastive_losses(variant, xs, As, Bs, chosens, 0.3, 16, 2)
    grads = torch.autograd.grad(together.sum(), [t for case in cases for t in case[:3]])
    for i, (x, A, B, chosen) in enumerate(cases):
        rows = iter([keep[i:i + 1]])
        alone = moelora.contrastive_losses(variant, [x], [A], [B], [chosen], 0.3, 16, 2)
        torch.testing.assert_close(together[i], alone[0], rtol=1e-12, atol=1e-12)
        for got, want in zip(grads[3 * i:3 * i + 3], torch.autograd.grad(alone[0], (x, A, B))):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", LOSSES)
@pytest.mark.parametrize("zero", ["all", "some"])
def test_contrastive_equals_reference_with_zero_experts(variant, zero):
    # at init B = 0 and every output is 0; below, the norm clamp at eps makes z = o / eps, and a zero
    # expert beside nonzero ones gets a gradient of order 1 / eps, which rank space must reproduce too
    x, A, B, chosen = random_case(30, 4, 2, 2, seed=7)
    with torch.no_grad():
        B[:] = 0 if zero == "all" else B * torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=B.dtype)[:, None, None]
    assert_same_as_ref(variant, x, A, B, chosen, 0.07, 16, 2)
    # tiny but nonzero outputs, on both sides of the clamp: ||o|| below and above eps = 1e-6
    with torch.no_grad():
        B[:] = torch.randn(B.shape, generator=torch.Generator().manual_seed(3), dtype=B.dtype) * 1e-7
    assert_same_as_ref(variant, x, A, B, chosen, 0.07, 16, 2)


@pytest.mark.parametrize("variant", LOSSES)
@pytest.mark.parametrize("d_out", [384, 768])
def test_contrastive_bf16_autocast_as_accurate_as_reference(variant, d_out):
    """Under bfloat16 autocast (training on CUDA), the error against float64 is at most twice the
    reference's own in the same autocast, plus a rounding floor (flash-attention's rule)."""
    x, A, B, chosen = random_case(400, 8, 2, 2, d_in=128, d_out=d_out, seed=d_out, dtype=torch.bfloat16)
    with torch.no_grad():
        A /= 128 ** 0.5  # outputs and cosines of a trained layer's size, not of unit-variance weights
    exact, _ = value_and_grads(LOSSES[variant][1], *(t.detach().double().requires_grad_() for t in (x, A, B)),
                               chosen, 0.07, 256, 2)
    errors = {}
    for name, loss_fn in zip(("rank space", "reference"), LOSSES[variant]):
        got, _ = value_and_grads(loss_fn, x, A, B, chosen, 0.07, 256, 2, autocast=True)
        errors[name] = [((g.double() - e).norm() / e.norm()).item() for g, e in zip(got, exact)]
    print(f"{variant} d_out={d_out}: relative error of loss, dx, dA, dB:", errors)
    for ours, theirs in zip(errors["rank space"], errors["reference"]):
        assert ours <= 2 * theirs + 1e-3
    assert errors["rank space"][0] < 1e-6  # rank space computes in float32, also under autocast


@pytest.mark.parametrize("variant", LOSSES)
def test_contrastive_compiles_without_graph_breaks(variant):
    x, A, B, chosen = random_case(40, 4, 2, 2, dtype=torch.float32)
    loss = torch.compile(LOSSES[variant][0], fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    compiled = loss(x, A, B, chosen, 0.1, 16, 2)
    torch.manual_seed(0)
    torch.testing.assert_close(compiled, LOSSES[variant][0](x, A, B, chosen, 0.1, 16, 2))


# --------------------------------------------------------------------------------------------------
# what the losses reward

def test_balance_loss_is_one_when_uniform_and_grows_with_imbalance():
    E, N = 4, 8
    probs = torch.full((N, E), 1.0 / E)
    chosen = torch.zeros(N, E, dtype=torch.bool)
    chosen[torch.arange(N), torch.arange(N) % E] = True  # each expert gets N/E tokens
    torch.testing.assert_close(moelora.balance_loss(probs, chosen), torch.tensor(1.0))
    losses = []
    for skew in (0.25, 0.5, 0.75, 0.97):  # more and more probability and load on expert 0
        p = torch.full((N, E), (1 - skew) / (E - 1))
        p[:, 0] = skew
        c = torch.zeros(N, E, dtype=torch.bool)
        n0 = round(skew * N)
        c[:n0, 0] = True
        c[torch.arange(n0, N), 1 + torch.arange(N - n0) % (E - 1)] = True
        losses.append(moelora.balance_loss(p, c).item())
    assert losses[0] == pytest.approx(1.0) and all(a < b for a, b in zip(losses, losses[1:]))
    assert losses[-1] > 3.0  # close to E when everything goes to one expert


def expert_setup(identical, E=4, d=16, N=32, seed=0):
    """Experts whose outputs point along orthogonal axes (identical=False) or all the same way."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g)
    A = torch.randn(E, 1, d, generator=g)
    B = torch.zeros(E, d, 1)
    for e in range(E):
        B[e, 0 if identical else e, 0] = 1.0
    if identical:
        A[:] = A[0]
    chosen = torch.zeros(N, E, dtype=torch.bool)
    chosen[torch.arange(N), torch.arange(N) % E] = True
    chosen[torch.arange(N), (torch.arange(N) + 1) % E] = True
    return x, A, B, chosen


def test_expert_contrastive_lower_for_orthogonal_experts():
    orthogonal = moelora.contrastive_loss_expert(*expert_setup(identical=False), 0.07, 256, 2)
    identical = moelora.contrastive_loss_expert(*expert_setup(identical=True), 0.07, 256, 2)
    assert torch.isfinite(orthogonal) and torch.isfinite(identical)
    assert orthogonal < identical - 1.0, (orthogonal, identical)


def test_comoe_contrastive_lower_when_active_experts_agree():
    # CoMoE pulls a token's activated experts together and pushes its inactivated ones away
    N, E, d = 24, 4, 8
    x = torch.randn(N, d, generator=torch.Generator().manual_seed(0))
    A = torch.ones(E, 1, d)
    chosen = torch.zeros(N, E, dtype=torch.bool)
    chosen[:, :2] = True  # every token on experts 0 and 1
    agree = torch.zeros(E, d, 1)
    agree[0, 0, 0] = agree[1, 0, 0] = agree[2, 2, 0] = agree[3, 3, 0] = 1.0
    same = torch.zeros(E, d, 1)
    same[:, 0, 0] = 1.0
    low = moelora.contrastive_loss_comoe(x, A, agree, chosen, 0.07, 256)
    high = moelora.contrastive_loss_comoe(x, A, same, chosen, 0.07, 256)
    assert torch.isfinite(low) and torch.isfinite(high)
    assert low < 0.01 and high == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-3)


@pytest.mark.parametrize("variant", ["expert", "comoe"])
def test_contrastive_invariant_to_expert_order(variant):
    loss = moelora.CONTRASTIVE_LOSSES[variant]
    g = torch.Generator().manual_seed(4)
    x, A, B = torch.randn(20, 12, generator=g), torch.randn(5, 3, 12, generator=g), torch.randn(5, 7, 3, generator=g)
    chosen = torch.zeros(20, 5, dtype=torch.bool).scatter_(1, torch.randn(20, 5, generator=g).topk(2, -1).indices, True)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = loss(x, A, B, chosen, 0.1, 256, 2)
    b = loss(x, A[perm], B[perm], chosen[:, perm], 0.1, 256, 2)
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["expert", "comoe"])
def test_contrastive_finite_with_gradient_at_init(variant):
    # at init B = 0: every expert output is zero; the loss must stay finite, and so must its gradient
    layer = moelora.MoELoRALinear(nn.Linear(16, 8), n_experts=4, top_k=2, r=2, alpha=2.0, contrastive=variant)
    layer(torch.randn(30, 16))
    loss = layer.aux_losses["contrastive"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(layer.lora_B.grad).all()


def contrastive_expert_by_selection(x, A, B, chosen, tau):
    """The expert contrastive loss the obvious way: select the chosen outputs, loop over anchors."""
    o = torch.nn.functional.normalize(torch.einsum("eor,erd,sd->seo", B, A, x), dim=-1, eps=1e-6)
    z, labels = o[chosen], chosen.nonzero()[:, 1]
    losses = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        log_denominator = torch.logsumexp(torch.stack([z[i] @ z[j] / tau for j in others]), 0)
        losses.append(-torch.stack([z[i] @ z[j] / tau - log_denominator for j in positives]).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_expert_contrastive_equals_selection_loop(k):
    g = torch.Generator().manual_seed(k)
    x, A, B = torch.randn(9, 6, generator=g), torch.randn(4, 2, 6, generator=g), torch.randn(4, 5, 2, generator=g)
    chosen = torch.zeros(9, 4, dtype=torch.bool).scatter_(1, torch.randn(9, 4, generator=g).topk(k, -1).indices, True)
    chosen[0] = False  # a token with no expert, as a custom router may produce
    fast = moelora.contrastive_loss_expert(x, A, B, chosen, 0.2, 256, top_k=k)
    torch.testing.assert_close(fast, contrastive_expert_by_selection(x, A, B, chosen, 0.2), rtol=1e-5, atol=1e-6)
