"""The model, adapters and training loop on a GPU: no host synchronisation in a MoELoRA step, the kernel
and the reference agree inside a whole model, train.py and evaluate.py run with bf16 autocast."""

import dataclasses
import math

import pytest
import torch

import model
import moelora
from training import logged_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CFG = model.GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=128, block_size=64)
ADAPTER = moelora.AdapterConfig(kind="moelora", r=2, alpha=4.0, dropout=0.0, n_experts=8, top_k=2,
                                targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


def adapted_gpt(cfg, seed=0):
    torch.manual_seed(seed)
    m = moelora.mark_only_adapters_trainable(moelora.inject(model.GPT(CFG), cfg)).cuda()
    with torch.no_grad():  # B is zero at init; give the experts something to say
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    return m


def train_step(m, idx, cfg):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        loss = loss + moelora.auxiliary_loss(moelora.collect_aux(m), cfg)
    loss.backward()
    return loss


@pytest.mark.parametrize("impl", ["cuda", "ref"])
@pytest.mark.parametrize("contrastive", ["expert", "comoe"])
def test_training_step_never_waits_for_the_gpu(impl, contrastive):
    # a host synchronisation per layer (a .item(), a boolean mask, .nonzero()) stalls the launch queue
    cfg = dataclasses.replace(ADAPTER, impl=impl, contrastive=contrastive)
    m = adapted_gpt(cfg).train()
    idx = torch.randint(0, CFG.vocab_size, (4, 33), device="cuda")
    train_step(m, idx, cfg)  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(m, idx, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("impl", ["cuda", "ref"])
def test_cuda_graph_step_equals_the_eager_step(impl):
    """train.GraphedStep (the step as a CUDA graph, replayed) against train.train_step run eagerly, from the
    same weights on the same batches: the same losses and weights. No randomness (no dropout, every token in
    the contrastive loss), so that both draw nothing."""
    import train
    cfg = dataclasses.replace(ADAPTER, impl=impl, contrastive_tokens=4 * 32)
    tcfg = train.TrainConfig(init_from="test", adapter=cfg, cuda_graph=True)
    batches = [[t.cuda() for t in (idx[:, :-1], idx[:, 1:], torch.ones(4, 32))]
               for idx in torch.randint(0, CFG.vocab_size, (8, 4, 33)).unbind()]
    results = []
    for graphed in (False, True):
        m = adapted_gpt(cfg).train()
        opt = m.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cuda")
        run = train.Run(False, 0, 1, "cuda", "cuda", "bfloat16",
                        torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False), 1)
        step_loss = train.TrainingLoss(m, cfg, run.autocast)
        step = train.GraphedStep(step_loss, m, opt, tcfg, run) if graphed else None
        losses = []
        for i, batch in enumerate(batches):
            if graphed:
                losses.append(step(batch, 1e-2 / (i + 1)).clone())
            else:
                losses.append(train.eager_step(step_loss, m, opt, [batch], 1e-2 / (i + 1), tcfg, run))
        assert not graphed or step.graph is not None  # the last steps were replays
        results.append((torch.stack(losses), [p.detach().clone() for p in m.parameters() if p.requires_grad]))
    (eager, eager_w), (replayed, replayed_w) = results
    torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(replayed_w, eager_w):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["expert", "comoe"])
@pytest.mark.parametrize("scale", [1e-1, 5e-5])  # B trained a while, and B one AdamW step from its zero init
def test_contrastive_losses_under_inductor_as_accurate_as_eager(variant, scale):
    """The contrastive losses of layers of mixed shapes compiled by inductor on the GPU, with bf16 autocast inside
    the compiled function as train.TrainingLoss has it: against float64, loss and gradients no further off than
    eager's in the same autocast (twice its error plus a rounding floor, the kernel's rule). Every token kept
    (256 of 256): inductor draws its own random numbers, so a subsample would differ."""
    shapes = [(64, 192), (64, 64), (64, 256), (256, 64), (64, 192)]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(256, d_in, generator=g).bfloat16() for d_in, _ in shapes]
    As = [torch.randn(8, 2, d_in, generator=g) / d_in ** 0.5 for d_in, _ in shapes]
    Bs = [torch.randn(8, d_out, 2, generator=g) * scale for _, d_out in shapes]
    chosens = [torch.zeros(256, 8, dtype=torch.bool).scatter_(1, torch.randn(256, 8, generator=g).topk(2, -1).indices,
                                                              True).cuda() for _ in shapes]

    def under_autocast(*args, enabled=True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled):
            return moelora.contrastive_losses(*args).mean()

    def loss_and_grads(fn, dtype=None):
        inputs = [[t.cuda().to(dtype or t.dtype).requires_grad_() for t in ts] for ts in (xs, As, Bs)]
        loss = fn(variant, *inputs, chosens, 0.07, 256, 2, enabled=dtype is None)
        return [loss, *torch.autograd.grad(loss, [t for ts in inputs for t in ts])]

    exact = loss_and_grads(under_autocast, torch.float64)
    errors = {}
    for name, fn in [("eager", under_autocast), ("compiled", torch.compile(under_autocast, fullgraph=True))]:
        got = loss_and_grads(fn)
        errors[name] = [((a.double() - e).norm() / e.norm()).item() for a, e in zip(got, exact)]
    names = ["loss"] + [f"d{t}{i}" for t in "xAB" for i in range(len(shapes))]
    worse = [f"{name}: relative error compiled {ours:.2e}, eager {theirs:.2e}"
             for name, ours, theirs in zip(names, errors["compiled"], errors["eager"]) if not ours <= 2 * theirs + 1e-3]
    assert not worse, "; ".join(worse)


@pytest.mark.parametrize("contrastive", ["expert", "none"])
def test_compiled_training_loss_as_accurate_as_eager_from_init(contrastive):
    """train.py's --compile on the GPU (inductor): train.TrainingLoss compiled, three train steps from the
    adapters' init (B = 0: the contrastive cosines start at their clamp), against eager bf16 and float64 from the
    same weights on the same padded batches. The compiled steps' losses and gradient norms are finite and, by
    STYLE's rule, no further from float64 than 2x eager bf16's error + a rounding floor (bf16's roundings differ
    where inductor fuses ops, and three Adam steps carry them on). No randomness (no dropout, every token in the
    contrastive loss)."""
    import contextlib
    import train
    cfg = dataclasses.replace(ADAPTER, impl="ref", contrastive=contrastive, contrastive_tokens=4 * 32)
    tcfg = train.TrainConfig(init_from="test", adapter=cfg)
    mask = torch.ones(4, 32, device="cuda")
    mask[:, 20:] = 0
    batches = [(idx[:, :-1].cuda(), idx[:, 1:].cuda(), mask) for idx in torch.randint(0, CFG.vocab_size, (3, 4, 33))]
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    results = {}
    for name, dtype, autocast, compiled in [("exact", torch.float64, contextlib.nullcontext(), False),
                                            ("eager", torch.float32, bf16, False), ("compiled", torch.float32, bf16, True)]:
        torch.manual_seed(0)
        m = moelora.mark_only_adapters_trainable(moelora.inject(model.GPT(CFG), cfg)).cuda().to(dtype).train()
        opt = m.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cuda")
        run = train.Run(False, 0, 1, "cuda", "cuda", "bfloat16", autocast, 1)
        step_loss = train.TrainingLoss(m, cfg, run.autocast)
        step_loss = torch.compile(step_loss) if compiled else step_loss
        steps = [train.eager_step(step_loss, m, opt, [b], 1e-2, tcfg, run) for b in batches]
        results[name] = torch.stack(steps).double()  # (step, [lm, balance, contrastive, grad norm])
    exact = results["exact"]
    assert torch.isfinite(results["compiled"]).all(), f"compiled steps (lm, balance, contrastive, grad norm): " \
                                                       f"{results['compiled']}"
    # each quantity's relative error over the three steps (contrastive "none" logs a zero contrastive loss)
    errors = {name: (results[name] - exact).norm(dim=0) / exact.norm(dim=0).clamp(min=1e-12)
              for name in ("eager", "compiled")}
    print("relative errors (lm, balance, contrastive, grad norm):", {k: v.tolist() for k, v in errors.items()})
    assert (errors["compiled"] <= 2 * errors["eager"] + 1e-3).all(), \
        f"compiled {errors['compiled'].tolist()} against eager {errors['eager'].tolist()}; steps: {results}"


def test_kernel_and_reference_agree_in_a_model():
    idx = torch.randint(0, CFG.vocab_size, (3, 40), device="cuda")
    results = {}
    for impl in ("cuda", "ref"):
        m = adapted_gpt(dataclasses.replace(ADAPTER, impl=impl, contrastive="none")).train()
        logits, loss = m(idx[:, :-1], idx[:, 1:])
        (loss + moelora.collect_aux(m)["balance"]).backward()
        results[impl] = (logits, {n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    torch.testing.assert_close(results["cuda"][0], results["ref"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["ref"][1].items():
        torch.testing.assert_close(results["cuda"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_train_and_eval_scripts_on_gpu(tmp_path):
    import evaluate
    import train
    from data.prepare import ensure
    data_dir = str(tmp_path / "data")
    ensure(data_dir, seed=0, scale=0.02)
    common = [f"--data_dir={data_dir}", "--batch_size=8", "--max_iters=6", "--eval_interval=3", "--eval_iters=2",
              "--log_interval=2", "--device=cuda", "--dtype=bfloat16"]
    train.main(["--mode=pretrain", f"--out_dir={tmp_path / 'base'}", "--n_layer=2", "--n_embd=64",
                "--block_size=192", *common])
    model_ = train.main(["--mode=finetune", f"--init_from={tmp_path / 'base' / 'ckpt.pt'}", "--adapter.kind=moelora",
                         f"--out_dir={tmp_path / 'ft'}", "--adapter.impl=cuda", "--adapter.r=2", "--adapter.n_experts=4", *common])
    assert next(model_.parameters()).is_cuda
    report = evaluate.main([f"--ckpt={tmp_path / 'ft' / 'ckpt.pt'}", "--max_items=4", "--device=cuda"])
    assert len(report["ft"]["accuracy"]) == 11
    train.main(["--mode=finetune", f"--init_from={tmp_path / 'base' / 'ckpt.pt'}", "--adapter.kind=moelora",
                f"--out_dir={tmp_path / 'graphed'}", "--cuda_graph=True", "--adapter.r=2", "--adapter.n_experts=4",
                *common])
    losses = logged_losses(tmp_path / "graphed")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
