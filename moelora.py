"""
LoRA and MoELoRA, written out: the core op, its dispatch to the CUDA kernel, the adapter layers, the
router, the auxiliary losses, and the plumbing that puts adapters into a model and saves them.

MoELoRA (Luo et al., 2024, arXiv 2402.12851) gives a frozen linear layer y = W x + b a set of E low-rank
experts and a router. Per token the router picks the top-k experts, and the layer adds their gated sum:

    p   = softmax(W_g x)                                  # (E,) router probabilities
    g_e = p_e / sum_{j in top-k} p_j  for the top-k, else 0
    y   = W x + b + scaling * sum_e g_e * B_e (A_e x)     # A_e: (r, d_in), B_e: (d_out, r)

A balance loss keeps the router from sending every token to one expert, and a contrastive loss pushes
the experts to learn distinct features. Plain LoRA (Hu et al., 2021, arXiv 2106.09685) is the case E = 1.

Reading order: moelora_ref (the maths), moelora (dispatch to the reference or the CUDA kernel, whose Python
glue lives in kernel.py), LoRALinear, Router, MoELoRALinear, the losses, then AdapterConfig / inject / state
dicts / parameter counts.

Try it:
    python -c "import torch, moelora; print(moelora.MoELoRALinear(torch.nn.Linear(16, 16), 4, 2, 2, 4.0))"
"""

import fnmatch
import math
import re
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernel


# ----------------------------------------------------------------------------------------------------
# The core op: one expert-gated low-rank matmul carries the whole adapter computation

def moelora_ref(x, A, B, gates, scaling):
    """The MoELoRA adapter output, in plain PyTorch (the reference every fast path is tested against).

    Semantics: y[n] = scaling * sum_e gates[n, e] * B[e] @ (A[e] @ x[n])
      x:     (N, d_in)        tokens
      A:     (E, r, d_in)     the experts' down-projections
      B:     (E, d_out, r)    the experts' up-projections
      gates: (N, E)           per-token expert weights, zero where a token does not use an expert
      scaling: float          alpha / r
      returns y: (N, d_out), the adapter's contribution only (the caller adds the frozen W x + b)

    All experts are computed for every token and the unused ones multiplied by zero: with E*r small
    (<= ~256) one dense matmul is cheaper than gathering each expert's tokens.
    """
    E, r, d_in = A.shape
    h = x @ A.reshape(E * r, d_in).T  # (N, E*r) every expert's down-projection at once
    return _gated_up(h, B, gates, scaling)


def _gated_up(h, B, gates, scaling):
    """moelora_ref's second half, from every expert's h = A_e x, (N, E*r): scaling * sum_e gates[:, e] * B_e h_e."""
    E, d_out, r = B.shape
    h = (h.view(-1, E, r) * gates[:, :, None]).view(-1, E * r)  # (N, E*r) expert e's r columns times gates[:, e]
    B_cat = B.permute(1, 0, 2).reshape(d_out, E * r)  # (d_out, E*r), column e*r+j = B[e][:, j]
    return scaling * (h @ B_cat.T)  # (N, d_out)


def _check_op_inputs(x, A, B, gates, scaling):
    """Shape, dtype and device checks shared by every implementation, with messages a user can act on."""
    for name, t in (("x", x), ("A", A), ("B", B), ("gates", gates)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"moelora: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"moelora: {name} must be a floating-point tensor, got {t.dtype}")
    if x.dim() != 2 or A.dim() != 3 or B.dim() != 3 or gates.dim() != 2:
        raise ValueError(f"moelora: expected x (N, d_in), A (E, r, d_in), B (E, d_out, r), gates (N, E); got "
                         f"x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, gates {tuple(gates.shape)}")
    (N, d_in), (E, r, d_in_A), (E_B, d_out, r_B) = x.shape, A.shape, B.shape
    if d_in_A != d_in:
        raise ValueError(f"moelora: A is (E, r, d_in) = {tuple(A.shape)} but x has d_in = {d_in}")
    if (E_B, r_B) != (E, r):
        raise ValueError(f"moelora: B is {tuple(B.shape)}, expected (E, d_out, r) with E = {E}, r = {r} from A")
    if tuple(gates.shape) != (N, E):
        raise ValueError(f"moelora: gates is {tuple(gates.shape)}, expected (N, E) = ({N}, {E})")
    if not (x.dtype == A.dtype == B.dtype == gates.dtype):
        raise TypeError(f"moelora: x, A, B and gates must share one dtype; got x {x.dtype}, A {A.dtype}, "
                        f"B {B.dtype}, gates {gates.dtype}")
    if not (x.device == A.device == B.device == gates.device):
        raise ValueError(f"moelora: x, A, B and gates must be on one device; got x {x.device}, A {A.device}, "
                         f"B {B.device}, gates {gates.device}")
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise TypeError(f"moelora: scaling must be a Python number, got {type(scaling).__name__}")


# ----------------------------------------------------------------------------------------------------
# Dispatch: the reference, or the CUDA kernel (kernel.py, csrc/)

_warned_fallback = False


def moelora(x, A, B, gates, scaling, impl="auto"):
    """The MoELoRA adapter output; same semantics and arguments as moelora_ref.

    impl: "ref" the PyTorch reference; "cuda" the CUDA kernel (an error if it cannot be built or the
    tensors are not on a GPU); "auto" the kernel where it pays off (auto_uses_kernel: CUDA tensors and at
    least 64 rank columns E*r), else the reference (warning once if the kernel failed to build).
    """
    _check_op_inputs(x, A, B, gates, scaling)
    if impl == "ref":
        return moelora_ref(x, A, B, gates, scaling)
    if impl == "cuda":
        if not x.is_cuda:
            raise ValueError(f"moelora: impl='cuda' needs CUDA tensors, got tensors on {x.device}")
        return kernel.moelora_cuda(x, A, B, gates, scaling)
    if impl == "auto":
        if auto_uses_kernel(x, A):
            return kernel.moelora_cuda(x, A, B, gates, scaling)
        return moelora_ref(x, A, B, gates, scaling)
    raise ValueError(f"moelora: impl must be 'auto', 'cuda' or 'ref', got {impl!r}")


# The kernel works in tiles of 64 rank columns (csrc/). Below E*r = 64 it computes padding, and cuBLAS's
# skinny matmuls on the reference path train faster: GPT-2-small's shape with 8 experts of rank 2 (E*r = 16)
# trains at 1.16-1.39x the kernel's tokens/s on the reference under CUDA graphs, and 1.05x eager at batch 32
# (bench.py e2e, H200, dev/runs/h200-2026-12-02b). impl="auto" takes the kernel from E*r = 64 up.
KERNEL_MIN_RANKS = 64


def auto_uses_kernel(x, A):
    """Whether impl="auto" runs the CUDA kernel: CUDA tensors, E*r >= KERNEL_MIN_RANKS, and a kernel that builds."""
    return x.is_cuda and A.shape[0] * A.shape[1] >= KERNEL_MIN_RANKS and _kernel_loads()


def _kernel_loads():
    """Whether the kernel can be had; on the first failure, say why once and carry on with the reference."""
    global _warned_fallback
    try:
        kernel.load_kernel()
        return True
    except RuntimeError as e:
        if not _warned_fallback:
            warnings.warn(f"moelora: CUDA kernel unavailable, using the PyTorch reference instead: {e}")
            _warned_fallback = True
        return False


def _compute_dtype(x):
    """The dtype the adapter maths runs in: autocast's when autocast is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# ----------------------------------------------------------------------------------------------------
# LoRA: one low-rank update beside a frozen linear layer

class LoRALinear(nn.Module):
    """y = base(x) + scaling * B (A dropout(x)), with base frozen. merge() folds B A into base.weight."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        self.base = base
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **_like(base)))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **_like(base)))  # (d_out, r)
        # A as loralib initialises it, B zero: the adapted layer starts equal to its base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        dtype = _compute_dtype(x)
        h = self.dropout(x).to(dtype) @ self.lora_A.to(dtype).T  # (..., r)
        return y + self.scaling * (h @ self.lora_B.to(dtype).T)  # (..., d_out)

    @torch.no_grad()
    def merge(self):
        """Fold the update into the base weight, so inference costs what the base costs."""
        if not self.merged:
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.scaling * (self.lora_B @ self.lora_A)
            self.merged = False

    def extra_repr(self):
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def _like(linear):
    return {"device": linear.weight.device, "dtype": linear.weight.dtype}


# ----------------------------------------------------------------------------------------------------
# The router: which experts each token uses, and with what weight

@dataclass
class Routing:
    """What a Router hands back: the gates the op needs, and what the losses and statistics need."""
    gates: torch.Tensor  # (N, E) float32, zero outside the chosen experts
    probs: torch.Tensor  # (N, E) float32, the full softmax over experts
    chosen: torch.Tensor  # (N, E) bool, True where gates may be nonzero (the top-k)


class Router(nn.Module):
    """Top-k softmax router: p = softmax(W_g x) in float32, keep the k largest, renormalise them.

    A new routing idea is a subclass overriding select(probs); see README, "How to add a routing idea".
    """

    def __init__(self, d_in, n_experts, top_k, jitter=0.0):
        super().__init__()
        if not isinstance(n_experts, int) or n_experts <= 0:
            raise ValueError(f"n_experts must be a positive integer, got {n_experts!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be an integer in [1, n_experts={n_experts}], got {top_k!r}")
        self.n_experts = n_experts
        self.top_k = top_k
        self.jitter = jitter
        self.weight = nn.Parameter(torch.empty(n_experts, d_in))  # (E, d_in), no bias
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        if self.training and self.jitter > 0:
            # Switch Transformer's multiplicative input jitter, which explores other routings
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        # the matmul reads x in its own dtype (a float32 copy of a bf16 x would cost more than the adapter)
        # and accumulates in float32
        return self.route(F.linear(x, self.weight.to(x.dtype)))

    def route(self, logits):
        """Routing from the router's logits W_g x (N, E): the softmax, where routing decisions are made, in
        float32, then select. (MoELoRALinear may compute the logits with the experts' A, in one matmul.)"""
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)  # (N, E)
        gates, chosen = self.select(probs)
        return Routing(gates=gates, probs=probs, chosen=chosen)

    def select(self, probs):
        """probs (N, E) -> (gates (N, E), chosen (N, E) bool): keep the top-k, renormalised to sum to 1."""
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        chosen = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_i, True)  # (N, E)
        gates = torch.zeros_like(probs).scatter(1, top_i, top_p / top_p.sum(-1, keepdim=True))  # (N, E)
        return gates, chosen

    def extra_repr(self):
        return f"n_experts={self.n_experts}, top_k={self.top_k}, jitter={self.jitter}"


# Routers by name, for AdapterConfig.router and train.py's --router: register a new idea here
ROUTERS = {"topk": Router}


# ----------------------------------------------------------------------------------------------------
# MoELoRA: E low-rank experts and a router beside a frozen linear layer

class MoELoRALinear(nn.Module):
    """y = base(x) + scaling * sum_e g_e(x) * B_e A_e dropout(x), with base frozen.

    After each forward the layer keeps its routing (and, training, its input) for the training loss and
    for logging, and computes from them when asked:
      aux_losses: {"balance": scalar, "contrastive": scalar (training only, when enabled)}
      routing_stats: {"load": (E,) fraction of (token, slot) pairs per expert, "entropy": scalar}
    moelora.collect_aux(model) computes them for every layer at once, batched over layers.
    """

    def __init__(self, base, n_experts, top_k, r, alpha, dropout=0.0, router="topk", router_jitter=0.0,
                 contrastive="expert", contrastive_tau=0.07, contrastive_tokens=256, impl="auto"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"MoELoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"expert rank r must be a positive integer, got {r!r}")
        if contrastive not in CONTRASTIVE_LOSSES and contrastive != "none":
            raise ValueError(f"contrastive must be one of {sorted(CONTRASTIVE_LOSSES)} or 'none', got {contrastive!r}")
        if contrastive == "comoe" and top_k < 2:
            raise ValueError("contrastive='comoe' contrasts a token's activated experts: it needs top_k >= 2")
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {sorted(ROUTERS)} (moelora.ROUTERS), got {router!r}")
        d_in, d_out = base.in_features, base.out_features
        self.base = base
        self.router = ROUTERS[router](d_in, n_experts, top_k, jitter=router_jitter)
        self.n_experts, self.top_k, self.r = n_experts, top_k, r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(n_experts, r, d_in, **_like(base)))  # (E, r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(n_experts, d_out, r, **_like(base)))  # (E, d_out, r)
        for A_e in self.lora_A:  # each expert initialised as a LoRA A; B zero keeps the base intact
            nn.init.kaiming_uniform_(A_e, a=math.sqrt(5))
        self.router.to(base.weight.device)
        self.dropout = nn.Dropout(dropout)
        self.contrastive = contrastive
        self.contrastive_tau = contrastive_tau
        self.contrastive_tokens = contrastive_tokens
        self.impl = impl
        self._step = None  # (routing, x or None) of the last forward, for the auxiliary losses

    def forward(self, x):
        y = self.base(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d_in), N = B*T
        dtype = _compute_dtype(x)
        xd = self.dropout(x).to(dtype)
        A, B = self.lora_A.to(dtype), self.lora_B.to(dtype)
        if self._router_joins_the_op(x):
            routing, delta = self._routed_ref(xd, A, B)
        else:
            routing = self.router(x)
            delta = moelora(xd, A, B, routing.gates.to(dtype), self.scaling, impl=self.impl)  # (N, d_out)
        # what the auxiliary losses need, kept for collect_aux, which computes them for all layers at once
        self._step = (routing, xd if self.training and self.contrastive != "none" else None)
        return y + delta.view(*shape[:-1], -1)

    def _router_joins_the_op(self, x):
        """Whether the router's logits may come out of the reference's down-projection (_routed_ref): on
        the reference path, where router and experts read the same x (no dropout or jitter in training)
        and the router computes its logits the standard way (a Router subclass may change select only)."""
        reference = self.impl == "ref" or (self.impl == "auto" and not auto_uses_kernel(x, self.lora_A))
        same_x = not self.training or (self.dropout.p == 0 and self.router.jitter == 0)
        return reference and same_x and type(self.router).forward is Router.forward

    def _routed_ref(self, x, A, B):
        """(routing, moelora_ref(x, A, B, gates, scaling)) with the router's E logits as E more rows of the
        down-projection: one matmul x [A_cat; W_g]^T (N, E*r + E) instead of two, forward and backward."""
        E, r, d_in = A.shape
        h = x @ torch.cat([A.reshape(E * r, d_in), self.router.weight.to(x.dtype)]).T  # (N, E*r + E)
        routing = self.router.route(h[:, E * r:])
        return routing, _gated_up(h[:, :E * r], B, routing.gates.to(x.dtype), self.scaling)

    @property
    def aux_losses(self):
        """This layer's auxiliary losses from its last forward: {"balance", "contrastive" (training only,
        when enabled)}, computed when asked (collect_aux computes every layer's at once)."""
        if self._step is None:
            return {}
        terms = aux_terms([self])
        return {k: v[0] for k, v in terms.items() if v is not None}

    @property
    def routing_stats(self):
        """Expert load (E,), the share of (token, slot) pairs each expert got, and the router's mean entropy
        (nats; ln E is uniform), over the tokens of the last forward."""
        if self._step is None:
            return {}
        probs, chosen = self._step[0].probs.detach(), self._step[0].chosen
        load = chosen.float().sum(0) / chosen.float().sum()  # (E,) sums to 1
        entropy = -(probs * probs.clamp(min=1e-9).log()).sum(-1).mean()
        return {"load": load, "entropy": entropy}

    def extra_repr(self):
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, r={self.r}, scaling={self.scaling:g}, "
                f"contrastive={self.contrastive!r}, impl={self.impl!r}")


# ----------------------------------------------------------------------------------------------------
# The auxiliary losses

def balance_loss(probs, chosen):
    """Switch/Mixtral load-balancing loss, E * sum_e f_e * P_e; 1 when routing is perfectly uniform.

    f_e: fraction of (token, slot) pairs routed to expert e (counts, no gradient)
    P_e: mean router probability of expert e (carries the gradient to the router)
    probs (..., N, E), chosen (..., N, E) bool -> (...): leading dimensions are layers computed at once.
    """
    E = probs.shape[-1]
    counts = chosen.float().sum(-2)  # (..., E)
    f = counts / counts.sum(-1, keepdim=True)  # (..., E)
    P = probs.mean(-2)  # (..., E)
    return E * (f * P).sum(-1)


def contrastive_loss_expert(x, A, B, chosen, tau, n_tokens, top_k):
    """Supervised contrastive (InfoNCE) loss over expert outputs, labelled by expert.

    On a random subsample of tokens, each chosen expert's unit-length output B_e A_e x is labelled e.
    For every output, the outputs of the same expert (on other tokens) are positives and all others are
    negatives; the loss is low when each expert's outputs point one way and other experts' elsewhere.
    x (N, d_in), A (E, r, d_in), B (E, d_out, r), chosen (N, E) bool; top_k: the slots per token (a token
    with fewer chosen experts leaves slots empty; one with more contributes top_k of them).

    How: contrastive_losses, for one layer (training computes every layer's at once).
    """
    return contrastive_losses("expert", [x], [A], [B], [chosen], tau, n_tokens, top_k)[0]


def contrastive_loss_comoe(x, A, B, chosen, tau, n_tokens, top_k=None):
    """CoMoE's contrastive loss (arXiv 2505.17553, Eq. 12), per token.

    Anchor: an activated expert's unit-length output q; positives P: the token's other activated experts;
    negatives N: its inactivated experts.
      L = -log( sum_P exp(q.p / tau) / (sum_{P+N} exp(q.z / tau) + 1e-3) )
    Every activated expert takes the anchor's place in turn and the losses are averaged, which makes the
    loss independent of the order of the experts. Needs top_k >= 2 (a positive) to be informative.
    x, A, B, chosen as in contrastive_loss_expert, on a random subsample of tokens; top_k is not needed
    (every expert takes part).

    How: contrastive_losses, for one layer (training computes every layer's at once).
    """
    return contrastive_losses("comoe", [x], [A], [B], [chosen], tau, n_tokens, top_k)[0]


CONTRASTIVE_LOSSES = {"expert": contrastive_loss_expert, "comoe": contrastive_loss_comoe}


def contrastive_losses(variant, xs, As, Bs, chosens, tau, n_tokens, top_k):
    """The contrastive loss ("expert" or "comoe") of L layers at once: lists of each layer's x (N, d_in),
    A (E, r, d_in), B (E, d_out, r), chosen (N, E), sharing N, E and r (d_in and d_out may differ).
    Returns (L,), each layer's loss on its own random subsample of n_tokens tokens.

    Only the cosines of expert outputs o = B_e A_e x are needed, and those come from rank space: with
    h = A_e x (r values) and the Gram matrix G = B_cat^T B_cat (E*r x E*r), <B_e h, B_f h'> = h^T G_ef h'.
    No (S, E, d_out) tensor is built, and after the per-layer h and G everything runs batched over layers:
    a few dozen ops for the whole model instead of per layer. No shape depends on the routing (empty
    slots are masked), so there is no host synchronisation and torch.compile can trace it.
    """
    (N, E), device = chosens[0].shape, chosens[0].device
    keep = _subsample(N, n_tokens, device, len(xs))  # (L, S)
    chosen = torch.stack(chosens).gather(1, keep[:, :, None].expand(-1, -1, E))  # (L, S, E)
    h, G = _rank_space(xs, As, Bs, keep)  # (L, S, E, r), (L, E*r, E*r)
    if variant == "expert":
        return _expert_infonce(h, G, chosen, tau, top_k)
    return _comoe(h, G, chosen, tau)


def _subsample(n_tokens, n_keep, device, n_layers=1):
    """(n_layers, S) token indices, each row at most n_keep tokens drawn at random without replacement
    (the n_keep largest of uniform random numbers: one draw for every layer at once)."""
    if n_tokens <= n_keep:
        return torch.arange(n_tokens, device=device).expand(n_layers, n_tokens)
    return torch.rand(n_layers, n_tokens, device=device).topk(n_keep, dim=1).indices


def _rank_space(xs, As, Bs, keep):
    """Per layer, h = A_e x for the kept tokens, and G = B_cat^T B_cat with B_cat = [B_1 ... B_E] (d_out, E*r)
    as in moelora_ref, stacked over layers: (L, S, E, r) and (L, E*r, E*r). In float32 (float64 for
    float64 inputs, as in the tests), under autocast too: the products are small, and in bfloat16 they
    would lose the cosines' precision. Layers of one shape (a GPT's c_attn layers, its mlp.c_proj layers,
    ...) share one batched matmul for h and one for G: a handful of ops per shape, not per layer."""
    up = lambda t: t.to(torch.promote_types(t.dtype, torch.float32))  # noqa: E731
    E, r, _ = As[0].shape
    by_shape = {}  # (A's shape, B's shape) -> the indices of its layers
    for i, (A, B) in enumerate(zip(As, Bs)):
        by_shape.setdefault((A.shape, B.shape), []).append(i)
    per_layer = {}  # layer index -> its (h, G), views into its shape's batched products
    with torch.autocast(keep.device.type, enabled=False):
        for ids in by_shape.values():
            x = up(torch.stack([xs[i][keep[i]] for i in ids]))  # (l, S, d_in) the kept tokens
            A = up(torch.stack([As[i] for i in ids])).reshape(len(ids), E * r, -1)  # (l, E*r, d_in)
            B_cat = up(torch.stack([Bs[i] for i in ids])).permute(0, 2, 1, 3).flatten(2)  # (l, d_out, E*r)
            per_layer.update(zip(ids, zip((x @ A.mT).unbind(), (B_cat.mT @ B_cat).unbind())))
    # back to the callers' layer order: one stack of views (no index tensor, which a CUDA graph could not copy)
    h, G = (torch.stack(t) for t in zip(*(per_layer[i] for i in range(len(xs)))))  # (L, S, E*r), (L, E*r, E*r)
    return h.view(*h.shape[:2], E, r), G


def _cosines(u, G, eps=1e-6):
    """Cosines between the outputs o = B_cat u of n slots, u (L, ..., n, E*r) (a slot's h in its expert's r
    columns, zeros elsewhere), from their dot products u^T G u'; G (L, E*r, E*r).

    Each norm is clamped below at eps, as F.normalize(o, eps=eps) has it. At init B = 0, so every o = 0:
    the clamp sits before the square root, which keeps the gradient 0 there, as F.normalize's is, rather
    than 0 * inf = NaN. Each side is divided by its norm before the product (u G / |o| times u' / |o'|), not the
    product by both norms after: the same numbers, but on the GPU inductor turned the latter into NaN and inf
    when some outputs are exactly zero (an expert with B = 0 still), and the norms from the product's diagonal
    into gradients 1e13 too large (dev/NOTES.md, the compiled NaN).
    """
    G = G.view(G.shape[0], *[1] * (u.dim() - 3), *G.shape[1:])  # broadcast over u's middle dimensions
    with torch.autocast(u.device.type, enabled=False):
        uG = u @ G  # (L, ..., n, E*r)
        norm = (uG * u).sum(-1, keepdim=True).clamp(min=eps * eps).sqrt()  # (L, ..., n, 1) max(||o||, eps)
        return (uG / norm) @ (u / norm).mT  # (L, ..., n, n)


def _expert_infonce(h, G, chosen, tau, top_k):
    """contrastive_loss_expert's InfoNCE per layer, from h (L, S, E, r), G, chosen (L, S, E) -> (L,).

    The outputs sit in a fixed S x top_k grid of slots per layer, empty ones masked out, rather than
    being selected."""
    L, S, E, r = h.shape
    filled, expert = chosen.float().topk(top_k, dim=-1)  # (L, S, k): each token's chosen experts first
    one_hot = F.one_hot(expert, E)[..., None].to(h.dtype)  # (L, S, k, E, 1)
    u = (h[:, :, None] * one_hot).reshape(L, S * top_k, E * r)  # (L, M, E*r), M = S * k slots
    cos = _cosines(u, G)  # (L, M, M)
    valid = filled.reshape(L, -1) > 0  # (L, M) slots holding a chosen expert's output
    label = expert.reshape(L, -1)  # (L, M) the expert of each slot
    self_pair = torch.eye(S * top_k, dtype=torch.bool, device=h.device)  # (M, M)
    others = valid[:, None, :] & ~self_pair  # (L, M, M) what each output is contrasted with
    positive = others & (label[:, :, None] == label[:, None, :])  # (L, M, M) the same expert on other tokens
    # an output with nothing to contrast keeps itself in the softmax, only to stay finite (it is no anchor)
    in_softmax = others | (self_pair & ~others.any(-1, keepdim=True))
    sim = (cos / tau).masked_fill(~in_softmax, float("-inf"))  # (L, M, M)
    log_prob = sim - torch.logsumexp(sim, dim=-1, keepdim=True)  # (L, M, M)
    n_pos = positive.sum(-1)  # (L, M)
    anchor = valid & (n_pos > 0)  # (L, M) chosen outputs with at least one positive
    # mean log-probability of each anchor's positives, then the mean over anchors
    per_anchor = torch.where(positive, log_prob, 0.0).sum(-1) / n_pos.clamp(min=1)  # (L, M)
    return -(per_anchor * anchor).sum(-1) / anchor.sum(-1).clamp(min=1)  # (L,)


def _comoe(h, G, mask, tau):
    """contrastive_loss_comoe per layer, from h (L, S, E, r), G, the chosen mask (L, S, E) -> (L,)."""
    L, S, E, r = h.shape
    eye = torch.eye(E, dtype=h.dtype, device=h.device)
    u = (h[:, :, None] * eye[:, :, None]).reshape(L, S, E, E * r)  # (L, S, E, E*r) expert a's h in its columns
    sim = _cosines(u, G) / tau  # (L, S, E, E): anchor a against expert b, within each token
    not_self = ~torch.eye(E, dtype=torch.bool, device=h.device)  # (E, E)
    positive = mask[:, :, None, :] & not_self  # (L, S, E, E): b activated, b != a
    # exp(sim) <= exp(1 / tau), about 1.6e6 at tau = 0.07: no overflow in float32
    numerator = (sim.exp() * positive).sum(-1)  # (L, S, E)
    denominator = (sim.exp() * not_self).sum(-1) + 1e-3  # (L, S, E): P + N, every expert but the anchor
    loss = -(numerator / denominator).clamp(min=1e-30).log()  # (L, S, E)
    # the mean over (token, activated anchor) pairs, written with a mask: no routing-dependent shape
    return (loss * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp(min=1)


def aux_terms(layers):
    """The auxiliary losses of MoELoRA layers from their last forward, each kind computed for all layers
    that can share one batched computation (same shapes and settings) at once.
    Returns {"balance": (L,), "contrastive": (L_c,) or None}, in an order of their own (means are what count)."""
    groups = {}
    for m in layers:
        routing, x = m._step
        groups.setdefault(("balance", routing.probs.shape), []).append(m)
        if x is not None:  # training with a contrastive loss
            groups.setdefault(("contrastive", m.contrastive, m.contrastive_tau, m.contrastive_tokens, m.top_k,
                               routing.probs.shape, m.r), []).append(m)
    balance, contrastive = [], []
    for key, ms in groups.items():
        routings = [m._step[0] for m in ms]
        chosen = [r.chosen for r in routings]
        if key[0] == "balance":
            balance.append(balance_loss(torch.stack([r.probs for r in routings]), torch.stack(chosen)))
        else:
            contrastive.append(contrastive_losses(ms[0].contrastive, [m._step[1] for m in ms],
                                                  [m.lora_A for m in ms], [m.lora_B for m in ms], chosen,
                                                  ms[0].contrastive_tau, ms[0].contrastive_tokens, ms[0].top_k))
    return {"balance": torch.cat(balance), "contrastive": torch.cat(contrastive) if contrastive else None}


def collect_aux(model):
    """The auxiliary losses of every MoELoRA layer's last forward.

    Returns {"balance": mean over layers (scalar tensor, or None without MoELoRA layers),
             "contrastive": mean over layers (or None when not computed)}.
    The training loss is L_lm + auxiliary_loss(aux, cfg). Computed when called, batched over layers
    (aux_terms): call it once per forward. The routing statistics are apart (routing_stats), so that a
    training step does not pay for them.
    """
    layers = [m for m in model.modules() if isinstance(m, MoELoRALinear) and m._step]
    if not layers:
        return {"balance": None, "contrastive": None}
    terms = aux_terms(layers)
    contrastive = terms["contrastive"].mean() if terms["contrastive"] is not None else None
    return {"balance": terms["balance"].mean(), "contrastive": contrastive}


def routing_stats(model):
    """{module name: {"load": (E,), "entropy": scalar}} of every MoELoRA layer's last forward."""
    return {name: m.routing_stats for name, m in model.named_modules() if isinstance(m, MoELoRALinear) and m._step}


def auxiliary_loss(aux, cfg):
    """What the auxiliary losses add to the training loss, balance_coef * balance + contrastive_coef *
    contrastive, from collect_aux's result (a term it lacks adds nothing); cfg: the AdapterConfig."""
    loss = 0.0
    if aux["balance"] is not None:
        loss = loss + cfg.balance_coef * aux["balance"]
    if aux["contrastive"] is not None:
        loss = loss + cfg.contrastive_coef * aux["contrastive"]
    return loss


# ----------------------------------------------------------------------------------------------------
# Putting adapters into a model

@dataclass
class AdapterConfig:
    """The adapters inject() puts into a model, and the coefficients of their auxiliary losses (training
    reads them from here: auxiliary_loss). train.py's TrainConfig holds one as its `adapter` group."""
    kind: str = "moelora"  # "lora" | "moelora" | "none" (train.py: fine-tune all parameters instead)
    r: int = 4  # rank of the LoRA, or of one MoELoRA expert
    alpha: float = 8.0  # scaling = alpha / r
    dropout: float = 0.05
    targets: tuple = ("attn.c_attn", "attn.c_proj")  # module-name patterns, see matches()
    # MoELoRA only
    n_experts: int = 8
    top_k: int = 2
    router: str = "topk"  # a name in moelora.ROUTERS
    router_jitter: float = 0.0
    contrastive: str = "expert"  # "expert" | "comoe" | "none"
    contrastive_tau: float = 0.07
    contrastive_tokens: int = 256  # tokens subsampled per layer for the contrastive loss
    balance_coef: float = 0.01
    contrastive_coef: float = 0.01
    impl: str = "auto"  # "auto" | "cuda" | "ref", see moelora()

    def __post_init__(self):
        # what each setting allows, named as train.py's users write it (adapter.r); a cli.ConfigError otherwise
        from cli import above, at_least, check, fraction, one_of
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        if isinstance(self.targets, list):
            self.targets = tuple(self.targets)
        check(self, {
            "kind": one_of("lora", "moelora", "none"), "r": at_least(1), "alpha": above(0), "dropout": fraction(),
            "targets": ((lambda v: len(v) > 0 and all(isinstance(p, str) and p for p in v)),
                        "one or more module-name patterns"),
            "n_experts": at_least(1), "top_k": at_least(1), "router": one_of(*ROUTERS),
            "router_jitter": fraction(), "contrastive": one_of(*CONTRASTIVE_LOSSES, "none"),
            "contrastive_tau": above(0), "contrastive_tokens": at_least(1), "balance_coef": at_least(0),
            "contrastive_coef": at_least(0), "impl": one_of("auto", "cuda", "ref"),
        }, prefix="adapter.", combinations=[
            (lambda c: c.top_k <= c.n_experts, f"adapter.top_k={self.top_k} (expected at most adapter.n_experts="
                                               f"{self.n_experts})"),
            (lambda c: c.contrastive != "comoe" or c.top_k >= 2, "adapter.contrastive='comoe' contrasts a token's "
                                                                 "activated experts: it needs adapter.top_k >= 2"),
        ])


def matches(name, pattern):
    """A module name matches a pattern written as a glob ('transformer.h.*.attn.c_attn') or as a suffix
    of dotted parts ('attn.c_attn', 'c_fc'): 'c_proj' matches both attn.c_proj and mlp.c_proj."""
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.endswith("." + pattern)


def inject(model, cfg):
    """Replace every nn.Linear whose name matches one of cfg.targets by its adapted version, in place.

    The base layers are kept (inside the adapters) and frozen; call mark_only_adapters_trainable(model)
    to freeze the rest of the model too. Returns the model.
    """
    if cfg.kind == "none":
        raise ValueError("inject: AdapterConfig.kind is 'none', there is nothing to inject")
    names = [n for n, m in model.named_modules() if any(matches(n, p) for p in cfg.targets)]
    if not names:
        raise ValueError(f"inject: no module name matches targets {list(cfg.targets)}; names look like "
                         f"{[n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:4]}")
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child_name)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"inject: {name} matches targets {list(cfg.targets)} but is a "
                             f"{type(base).__name__}, not an nn.Linear")
        base.requires_grad_(False)
        setattr(parent, child_name, _make_adapter(base, cfg))
    return model


def _make_adapter(base, cfg):
    if cfg.kind == "lora":
        return LoRALinear(base, cfg.r, cfg.alpha, cfg.dropout)
    return MoELoRALinear(base, cfg.n_experts, cfg.top_k, cfg.r, cfg.alpha, cfg.dropout, router=cfg.router,
                         router_jitter=cfg.router_jitter, contrastive=cfg.contrastive,
                         contrastive_tau=cfg.contrastive_tau, contrastive_tokens=cfg.contrastive_tokens,
                         impl=cfg.impl)


def is_adapter_param(name):
    """Adapter parameters, by name: the experts' A and B and the router's weight."""
    return re.search(r"(^|\.)(lora_A|lora_B|router\.weight)$", name) is not None


def mark_only_adapters_trainable(model):
    """requires_grad on adapter parameters only; everything of the base model is frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name))
    return model


def adapter_state_dict(model):
    """Only the adapter parameters (a few MB at most), to save beside the name of their base model."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_adapter_param(k)}


def load_adapter_state_dict(model, state_dict):
    """Load adapter parameters into a model with the same adapters injected; every name and shape must match."""
    ours = adapter_state_dict(model)
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    if missing or unexpected:
        raise ValueError(f"adapter state dict does not fit this model (were the same adapters injected?): "
                         f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                         f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    wrong = [f"{k}: saved {tuple(v.shape)}, model {tuple(ours[k].shape)}"
             for k, v in state_dict.items() if v.shape != ours[k].shape]
    if wrong:
        raise ValueError("adapter state dict shapes do not fit this model: " + "; ".join(wrong[:6]))
    model.load_state_dict(state_dict, strict=False)
    return model


def set_impl(model, impl):
    """Switch every MoELoRA layer of the model to impl ("auto" | "cuda" | "ref")."""
    for m in model.modules():
        if isinstance(m, MoELoRALinear):
            m.impl = impl
    return model


# ----------------------------------------------------------------------------------------------------
# Counting parameters, and MoELoRA at the same budget as LoRA

def count_parameters(model):
    """{"base", "adapter" (LoRA or experts' A and B), "router", "trainable"}: the router is reported apart,
    so that equal-parameter comparisons show what it adds rather than hide it."""
    counts = {"base": 0, "adapter": 0, "router": 0, "trainable": 0}
    for name, p in model.named_parameters():
        if name.endswith("router.weight"):
            counts["router"] += p.numel()
        elif is_adapter_param(name):
            counts["adapter"] += p.numel()
        else:
            counts["base"] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
    return counts


def equal_params_moelora(lora_cfg, n_experts, top_k):
    """The MoELoRA config whose experts hold as many parameters as a LoRA of rank lora_cfg.r: E experts of
    rank R / E. scaling (alpha / r) is kept, so alpha shrinks with r. The router's E * d_in parameters
    come on top and are reported by count_parameters()."""
    R = lora_cfg.r
    if R % n_experts:
        raise ValueError(f"a LoRA of rank {R} cannot be split into {n_experts} experts of equal rank")
    r = R // n_experts
    kw = {f.name: getattr(lora_cfg, f.name) for f in fields(AdapterConfig)}
    kw.update(kind="moelora", r=r, alpha=lora_cfg.alpha * r / R, n_experts=n_experts, top_k=top_k)
    return AdapterConfig(**kw)
