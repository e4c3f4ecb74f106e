"""Routing patterns for tests: gate matrices (N, E) that stress an expert-gated op in different ways."""

import torch

PATTERNS = ("uniform", "zipf", "one_expert", "unused_expert", "soft")


def make_gates(pattern, N, E, k, generator=None, dtype=torch.float64):
    """Gates (N, E) with exactly min(k, E) nonzeros per row summing to 1 (soft: all E nonzero).

    uniform: top-k of random logits; zipf: experts drawn with probability ~ 1/rank, most tokens on a few;
    one_expert: every token on expert 0 (and k-1 fixed others); unused_expert: the last expert never
    chosen; soft: dense softmax gates, LoRAMoE-style.
    """
    k = min(k, E)
    logits = torch.randn(N, E, generator=generator, dtype=torch.float64)
    if pattern == "soft":
        return torch.softmax(logits, -1).to(dtype)
    if pattern == "uniform":
        idx = logits.topk(k, -1).indices
    elif pattern == "zipf":
        weights = 1.0 / torch.arange(1, E + 1, dtype=torch.float64)
        idx = torch.multinomial(weights.expand(N, E), k, replacement=False, generator=generator)
    elif pattern == "one_expert":
        idx = torch.arange(k).expand(N, k)
    elif pattern == "unused_expert":
        if E == 1:
            idx = torch.zeros(N, 1, dtype=torch.long)
        else:
            idx = logits[:, : E - 1].topk(min(k, E - 1), -1).indices
    else:
        raise ValueError(pattern)
    weights = torch.rand(N, idx.shape[1], generator=generator, dtype=torch.float64) + 0.1
    gates = torch.zeros(N, E, dtype=torch.float64).scatter(1, idx, weights / weights.sum(-1, keepdim=True))
    return gates.to(dtype)
