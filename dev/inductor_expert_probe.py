"""Where inductor on the GPU goes wrong in the "expert" contrastive loss's backward (dev/NOTES.md, "The compiled
NaN"): tests/test_gpu.py's inputs (five layers of mixed shapes, every token kept, bf16 autocast inside the
compiled function), and the relative error of the loss and of each input's gradient against float64, for eager,
for other backends, for inductor with some of its passes off, and for inductor on rewritten pieces of the loss
(each the same numbers in float64). One line per variant; the worst gradient error is what failed (>1e-2).

Then tests/test_gpu.py's compiled TrainingLoss from the adapters' init (B = 0), step by step: the logged values
eager and compiled, and each layer's contrastive loss recomputed from the compiled run's inputs (eager, compiled
alone, float64), with those inputs saved to $OUT/from_init_step<i>.pt for a look on the CPU.

    python -m dev.inductor_expert_probe        # on a CUDA GPU
"""

import contextlib
import time

import torch
import torch.nn.functional as F

import moelora

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the probe itself
SHAPES = [(64, 192), (64, 64), (64, 256), (256, 64), (64, 192)]


def inputs(scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(256, d_in, generator=g).bfloat16() for d_in, _ in SHAPES]
    As = [torch.randn(8, 2, d_in, generator=g) / d_in ** 0.5 for d_in, _ in SHAPES]
    Bs = [torch.randn(8, d_out, 2, generator=g) * scale for _, d_out in SHAPES]
    chosens = [torch.zeros(256, 8, dtype=torch.bool).scatter_(1, torch.randn(256, 8, generator=g).topk(2, -1).indices,
                                                              True).to(DEVICE) for _ in SHAPES]
    return xs, As, Bs, chosens


def loss_fn(variant, *args, enabled=True):
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=enabled):
        return moelora.contrastive_losses(variant, *args).mean()


def errors(fn, variant, data, dtype=None, enabled=True):
    xs, As, Bs, chosens = data
    ins = [[t.to(DEVICE).to(dtype or t.dtype).requires_grad_() for t in ts] for ts in (xs, As, Bs)]
    loss = fn(variant, *ins, chosens, 0.07, 256, 2, enabled=enabled and dtype is None)
    return [loss.detach(), *torch.autograd.grad(loss, [t for ts in ins for t in ts])]


def report(name, got, exact):
    err = [((a.double() - e).norm() / e.norm()).item() for a, e in zip(got, exact)]
    grads = err[1:]
    worst = max(range(len(grads)), key=grads.__getitem__)
    finite = all(torch.isfinite(g).all() for g in got)
    print(f"  {name:<44} loss {err[0]:.1e}  dx {max(grads[:5]):.1e}  dA {max(grads[5:10]):.1e}  "
          f"dB {max(grads[10:]):.1e}  worst {'xAB'[worst // 5]}{worst % 5}  finite {finite}", flush=True)


# rewritten pieces: the same loss in float64, written another way
def cosines_diagonal(u, G, eps=1e-6):  # the norms from the diagonal of the dots, as before 2026-12-03
    G = G.view(G.shape[0], *[1] * (u.dim() - 3), *G.shape[1:])
    with torch.autocast(u.device.type, enabled=False):
        dots = (u @ G) @ u.mT
    norm = dots.diagonal(dim1=-2, dim2=-1).clamp(min=eps * eps).sqrt()
    return dots / (norm[..., :, None] * norm[..., None, :])


def cosines_divided_after(u, G, eps=1e-6):  # the product divided by both norms, as until the third call
    G = G.view(G.shape[0], *[1] * (u.dim() - 3), *G.shape[1:])
    with torch.autocast(u.device.type, enabled=False):
        uG = u @ G
        dots = uG @ u.mT
    norm = (uG * u).sum(-1).clamp(min=eps * eps).sqrt()
    return dots / (norm[..., :, None] * norm[..., None, :])


@contextlib.contextmanager
def patched(**fns):
    old = {k: getattr(moelora, k) for k in fns}
    for k, v in fns.items():
        setattr(moelora, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(moelora, k, v)


@contextlib.contextmanager
def inductor_config(**kw):
    import torch._inductor.config as cfg
    with cfg.patch(kw):
        yield


def finite_mask_infonce(h, G, chosen, tau, top_k):
    """moelora._expert_infonce with -1e4 where its mask has -inf (exp underflows to exactly 0 in float32 either
    way, since |cos / tau| <= 1 / 0.07); the rest as there."""
    L, S, E, r = h.shape
    filled, expert = chosen.float().topk(top_k, dim=-1)
    u = (h[:, :, None] * F.one_hot(expert, E)[..., None].to(h.dtype)).reshape(L, S * top_k, E * r)
    cos = moelora._cosines(u, G)
    valid, label = filled.reshape(L, -1) > 0, expert.reshape(L, -1)
    self_pair = torch.eye(S * top_k, dtype=torch.bool, device=h.device)
    others = valid[:, None, :] & ~self_pair
    positive = others & (label[:, :, None] == label[:, None, :])
    in_softmax = others | (self_pair & ~others.any(-1, keepdim=True))
    sim = (cos / tau).masked_fill(~in_softmax, -1e4)
    log_prob = sim - torch.logsumexp(sim, dim=-1, keepdim=True)
    n_pos = positive.sum(-1)
    anchor = valid & (n_pos > 0)
    per_anchor = torch.where(positive, log_prob, 0.0).sum(-1) / n_pos.clamp(min=1)
    return -(per_anchor * anchor).sum(-1) / anchor.sum(-1).clamp(min=1)


def main():
    for scale in (1e-1, 5e-5):
        data = inputs(scale)
        exact = errors(loss_fn, "expert", data, torch.float64)
        print(f"B ~ {scale}, expert:", flush=True)
        report("eager", errors(loss_fn, "expert", data), exact)
        report("eager float32 (no autocast)", errors(loss_fn, "expert", data, enabled=False), exact)
        variants = [  # (name, backend, moelora functions replaced, inductor options, autocast)
            ("inductor", "inductor", {}, {}, True),
            ("inductor, mix_order_reduction off", "inductor", {}, {"triton.mix_order_reduction": False}, True),
            ("inductor float32 (no autocast)", "inductor", {}, {}, False),
            ("aot_eager", "aot_eager", {}, {}, True),
            ("inductor, norms from the diagonal", "inductor", {"_cosines": cosines_diagonal}, {}, True),
            ("inductor, divided after the product", "inductor", {"_cosines": cosines_divided_after}, {}, True),
            ("inductor, -1e4 not -inf in the mask", "inductor", {"_expert_infonce": finite_mask_infonce}, {}, True),
            ("inductor, persistent_reductions off", "inductor", {}, {"triton.persistent_reductions": False}, True),
            ("inductor, split_reductions off", "inductor", {}, {"split_reductions": False}, True),
        ]
        for name, backend, fns, config, enabled in variants:
            if scale != 1e-1 and name not in ("inductor", "inductor, mix_order_reduction off"):
                continue
            torch._dynamo.reset()
            start = time.time()
            try:
                with patched(**fns), inductor_config(**config):
                    fn = torch.compile(loss_fn, backend=backend, fullgraph=True)
                    got = errors(fn, "expert", data, enabled=enabled)
                report(f"{name} ({time.time() - start:.0f} s)", got, exact)
            except Exception as e:  # noqa: BLE001 — a probe: report and go on
                print(f"  {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)


def from_init(out):
    import dataclasses
    import os

    import model
    import train
    cfg_model = model.GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128, block_size=64)
    cfg = moelora.AdapterConfig(kind="moelora", r=2, alpha=4.0, dropout=0.0, n_experts=8, top_k=2, impl="ref",
                                targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
                                contrastive_tokens=4 * 32)
    tcfg = train.TrainConfig(init_from="probe", adapter=cfg)
    mask = torch.ones(4, 32, device=DEVICE)
    mask[:, 20:] = 0
    g = torch.Generator().manual_seed(0)
    batches = [(i[:, :-1].to(DEVICE), i[:, 1:].to(DEVICE), mask)
               for i in torch.randint(0, 128, (4, 4, 33), generator=g)]
    alone = torch.compile(moelora.contrastive_losses, fullgraph=True)

    class Split(train.TrainingLoss):  # the model and the auxiliary losses compiled as two graphs
        def __init__(self, *args):
            super().__init__(*args)
            self.compiled_model = torch.compile(self.model)
            self.compiled_aux = torch.compile(moelora.collect_aux)

        def forward(self, x, y, mask):
            with self.autocast:
                _, lm_loss = self.compiled_model(x, y, loss_mask=mask)
            aux = self.compiled_aux(self.model)
            loss = lm_loss + moelora.auxiliary_loss(aux, self.adapter_cfg)
            return loss, torch.stack([lm_loss, aux["balance"], aux["contrastive"]]).detach().float()

    modes = {"eager": lambda sl: sl, "whole": torch.compile,
             "whole, mix-order off": lambda sl: torch.compile(sl, options={"triton.mix_order_reduction": False}),
             "whole, divided after the product": torch.compile, "whole, -1e4 mask": torch.compile,
             "whole, aot_eager": lambda sl: torch.compile(sl, backend="aot_eager"), "split": None}
    for mode, wrap in modes.items():
        compiled = mode != "eager"
        torch._dynamo.reset()
        torch.manual_seed(0)
        m = moelora.mark_only_adapters_trainable(moelora.inject(model.GPT(cfg_model), cfg)).to(DEVICE).train()
        opt = m.configure_optimizers(0.0, 1e-2, (0.9, 0.99), DEVICE)
        run = train.Run(False, 0, 1, DEVICE, DEVICE, "bfloat16", torch.autocast(DEVICE, dtype=torch.bfloat16), 1)
        step_loss = Split(m, cfg, run.autocast) if mode == "split" else wrap(train.TrainingLoss(m, cfg, run.autocast))
        fns = ({"_cosines": cosines_divided_after} if "divided after" in mode else
               {"_expert_infonce": finite_mask_infonce} if "-1e4" in mode else {})
        layers = [mod for mod in m.modules() if isinstance(mod, moelora.MoELoRALinear)]
        for i, b in enumerate(batches):
            A = [mod.lora_A.detach().clone() for mod in layers]
            B = [mod.lora_B.detach().clone() for mod in layers]
            with patched(**fns):
                values = train.eager_step(step_loss, m, opt, [b], 1e-2, tcfg, run)
            print(f"  {mode:<26} step {i}: (lm, balance, contrastive, grad norm) "
                  f"{[round(v, 4) for v in values.tolist()]}", flush=True)
            if mode != "whole":
                continue
            xs = [mod._step[1].detach().clone() for mod in layers]
            chosen = [mod._step[0].chosen.detach().clone() for mod in layers]
            args = ("expert", xs, A, B, chosen, 0.07, 128, 2)
            eager = moelora.contrastive_losses(*args)
            exact = moelora.contrastive_losses("expert", [x.double() for x in xs], [a.double() for a in A],
                                               [t.double() for t in B], chosen, 0.07, 128, 2)
            print(f"    per layer, from the compiled run's inputs: eager {eager.tolist()}\n"
                  f"      compiled alone {alone(*args).tolist()}\n      float64 {exact.tolist()}\n"
                  f"      B norms {[round(t.norm().item(), 4) for t in B]}, zero experts "
                  f"{[int((t.flatten(1).abs().sum(1) == 0).sum()) for t in B]}", flush=True)
            torch.save({"xs": xs, "A": A, "B": B, "chosen": chosen}, os.path.join(out, f"from_init_step{i}.pt"))


if __name__ == "__main__":
    import os
    import sys
    if "--from_init" not in sys.argv:
        main()
    from_init(os.environ.get("OUT", "."))
