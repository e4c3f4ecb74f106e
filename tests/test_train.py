"""train.py and evaluate.py end to end on a tiny model and a small build of the data: pretrain, fine-tune with
each adapter kind, evaluate; exact resume; DDP equivalence; clear errors; crash-safe checkpoints."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import cli
import evaluate
import moelora
import train
from training import failing_forward, finetune_args, logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("adapter", ["lora", "moelora", "none"])
def test_pretrain_finetune_eval(data_dir, base_ckpt, tmp_path, adapter):
    out = tmp_path / adapter
    trained = train.main(finetune_args(data_dir, base_ckpt, out, f"--adapter.kind={adapter}"))
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["iter_num"] == 6 and ckpt["kind"] == ("full" if adapter == "none" else "adapter")
    if adapter != "none":  # adapter checkpoints hold adapters only, and name their base
        assert all(moelora.is_adapter_param(k) for k in ckpt["model"])
        assert ckpt["base"]["init_from"] == os.path.abspath(base_ckpt)
        # fine-tuning changed only adapter parameters: the base is bit-identical
        base = checkpoint.load_base(base_ckpt).state_dict()
        for name, p in trained.state_dict().items():
            if not moelora.is_adapter_param(name):
                assert torch.equal(p, base[name.replace(".base.", ".")]), name
    report = evaluate.main([f"--ckpt={out / 'ckpt.pt'}", "--max_items=3", "--device=cpu"])
    acc = report[adapter]["accuracy"]
    assert len(acc) == 11 and all(0.0 <= a <= 1.0 for a in acc.values())
    assert (out / "eval.md").exists() and (out / "eval.json").exists()
    assert (out / "routing.json").exists() == (adapter == "moelora")


def test_eval_reproduces_trained_model(data_dir, base_ckpt, tmp_path):
    trained = train.main(finetune_args(data_dir, base_ckpt, tmp_path / "m", "--adapter.kind=moelora")).eval()
    loaded, _ = checkpoint.load_checkpoint(str(tmp_path / "m" / "ckpt.pt"))
    idx = torch.randint(0, 100, (2, 12))
    torch.testing.assert_close(loaded.eval()(idx)[0], trained(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("adapter", ["moelora", "none"])
def test_resume_continues_exactly(data_dir, base_ckpt, tmp_path, adapter):
    # dropout and the contrastive loss's token subsample both draw random numbers: resume must restore them
    extra = [f"--adapter.kind={adapter}", "--adapter.dropout=0.1", "--dropout=0.1", "--adapter.contrastive_tokens=16"]
    train.main(finetune_args(data_dir, base_ckpt, tmp_path / "whole", *extra))
    train.main(finetune_args(data_dir, base_ckpt, tmp_path / "split", *extra, "--max_iters=3", "--lr_decay_iters=6"))
    train.main(finetune_args(data_dir, base_ckpt, tmp_path / "split", "--init_from=resume", "--max_iters=6"))
    whole, split = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "split")
    assert sorted(whole) == sorted(split) == [1, 2, 3, 4, 5, 6]
    for step in whole:
        assert abs(whole[step] - split[step]) < 1e-6, (step, whole[step], split[step])


def test_ddp_two_processes_equal_one(data_dir, base_ckpt, tmp_path):
    """Two gloo processes, one micro-batch each, give the losses of one process doing both micro-batches."""
    # no dropout and no subsampling: the only difference left is the order of the gradient sums
    extra = ["--adapter.kind=moelora", "--adapter.dropout=0", "--adapter.contrastive_tokens=100000", "--grad_accum=2",
             "--max_iters=4"]
    args = finetune_args(data_dir, base_ckpt, tmp_path / "one", *extra)
    train.main(args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *finetune_args(data_dir, base_ckpt, tmp_path / "two", *extra)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])


# --------------------------------------------------------------------------------------------------
# errors and failures

@pytest.mark.parametrize("argv,error,words", [
    (["--learning_rate=1"], "ConfigError", "unknown setting 'learning_rate'.*valid settings: mode, init_from"),
    (["--max_iters=ten"], "ConfigError", "'max_iters' .*expects int"),
    (["--adapter.kind=prefix"], "ConfigError", r"adapter.kind='prefix' \(expected one of 'lora', 'moelora', 'none'\)"),
    (["--init_from=nowhere/ckpt.pt"], "FileNotFoundError", "base checkpoint nowhere/ckpt.pt does not exist"),
    (["--init_from=scratch"], "ConfigError", "fine-tuning needs a base"),
    (["--cuda_graph=True", "--device=cpu"], "ConfigError", "cuda_graph=True captures one process's single micro"),
])
def test_config_errors(data_dir, base_ckpt, tmp_path, argv, error, words):
    with pytest.raises(Exception, match=words) as info:
        train.main(finetune_args(data_dir, base_ckpt, tmp_path, *argv))
    assert type(info.value).__name__ == error


def test_padded_batches_are_the_same_examples(data_dir):
    """pad_to (cuda_graph's fixed shape) only adds padding: the same examples, masks and token count."""
    data = train.Data(data_dir, "finetune", seed=3)
    data.block_size = 192
    x, y, mask, n = data.batch("train", 5, 0, 8)
    px, py, pmask, pn = data.batch("train", 5, 0, 8, pad_to=192)
    T = x.shape[1]
    assert px.shape == (8, 192) and n == pn and n < x.numel()  # n counts example tokens, not padding
    assert torch.equal(px[:, :T], x) and torch.equal(py[:, :T], y) and torch.equal(pmask[:, :T], mask)
    assert not px[:, T:].any() and not pmask[:, T:].any()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("kind", ["moelora", "lora"])
def test_training_loss_compiles_whole_and_equals_eager(kind, autocast):
    """--compile compiles train.TrainingLoss: the model with its auxiliary losses in one graph (fullgraph fails
    on a graph break: the layers' kept routing, collect_aux's walk over the modules, the contrastive subsample).
    Same seed, same loss, logged terms and adapter gradients as eager, also under bf16 autocast, through
    train_step (an autocast entered outside the compiled loss reached its backward: gradients 1-2% off)."""
    from model import GPT, GPTConfig
    cfg = moelora.AdapterConfig(kind=kind, r=2, dropout=0.0, n_experts=4, top_k=2, contrastive_tokens=24,
                                targets=("attn.c_attn", "mlp.c_fc"))
    torch.manual_seed(0)
    gpt = moelora.mark_only_adapters_trainable(moelora.inject(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32,
                                                                            vocab_size=64, block_size=16)), cfg))
    with torch.no_grad():  # B is zero at init: give the experts, and so the contrastive loss, something to say
        for name, p in gpt.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.1)
    x, y = torch.randint(0, 64, (2, 2, 16)).unbind()
    mask = torch.ones(2, 16)
    run = train.Run(False, 0, 1, "cpu", "cpu", "bfloat16" if autocast else "float32",
                    torch.autocast("cpu", dtype=torch.bfloat16) if autocast else None, 1)
    step_loss = train.TrainingLoss(gpt, cfg, run.autocast)
    tcfg = train.TrainConfig(init_from="test", adapter=cfg, grad_clip=0.0)
    no_update = torch.optim.SGD([p for p in gpt.parameters() if p.requires_grad], lr=0.0)
    results = []
    for fn in (step_loss, torch.compile(step_loss, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(1)
        loss, terms = fn(x, y, mask)
        torch.manual_seed(1)  # and as train.py's step calls it (its autocast, its backward)
        values = train.train_step(fn, gpt, no_update, [(x, y, mask)], tcfg, run)
        torch.testing.assert_close(values[:3], terms)
        results.append((loss.detach(), terms, [p.grad.clone() for p in gpt.parameters() if p.requires_grad]))
        gpt.zero_grad(set_to_none=True)
    (eager, eager_terms, eager_grads), (compiled, compiled_terms, compiled_grads) = results
    assert (eager_terms[1:] > 0).all() == (kind == "moelora")  # balance and contrastive: MoELoRA's only
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_terms, eager_terms)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


def test_non_finite_watch_names_the_first_bad_step():
    watch = train.NonFiniteWatch("cpu", step=10)
    for values in ([1.0, 0.1, 0.2, 3.0], [2.0, 0.1, 0.2, float("inf")], [float("nan")] * 4):
        watch.update(torch.tensor(values))
        if values[0] == 1.0:
            watch.check(None, "out")  # nothing yet: no error
    with pytest.raises(FloatingPointError, match="not finite at step 11 .*lm 2.0.*gradient norm inf.*out/ckpt.pt "
                                                 r"\(step 9\) is untouched"):
        watch.check(9, "out")


def test_missing_data_and_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared data .*run python -m data.prepare"):
        train.main(["--mode=pretrain", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="init_from=resume, but .* does not exist"):
        train.main(["--init_from=resume", f"--out_dir={tmp_path}"])


def test_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--colour=red"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown setting 'colour'") and "Traceback" not in result.stderr


def test_interrupted_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"iter_num": 1, "w": torch.ones(3)})

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match=f"could not write {path} .*disk full"):
        checkpoint.save_checkpoint(path, {"iter_num": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    good = torch.load(path, weights_only=False)
    assert good["iter_num"] == 1 and torch.equal(good["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # the failed save's temporary file is gone


def test_nan_loss_stops_and_keeps_checkpoint(data_dir, base_ckpt, tmp_path, monkeypatch):
    failing_forward(monkeypatch, at_call=5, failure="nan")  # step 5; a checkpoint was written at step 3
    with pytest.raises(FloatingPointError, match="loss or gradient not finite at step 4.*step 3.* is untouched"):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["iter_num"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(data_dir, base_ckpt, tmp_path, monkeypatch):
    """Ctrl-C in the middle of step 5 (its forward has drawn dropout masks and the contrastive subsample): the
    step finishes, the run saves and stops; resuming gives the uninterrupted run's losses and weights, bit
    for bit."""
    extra = ["--adapter.kind=moelora", "--adapter.dropout=0.1", "--dropout=0.1", "--adapter.contrastive_tokens=16"]
    whole = train.main(finetune_args(data_dir, base_ckpt, tmp_path / "whole", *extra))
    failing_forward(monkeypatch, at_call=5, failure="interrupt")
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 5: saved"):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path / "split", *extra))
    assert torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)["iter_num"] == 5
    monkeypatch.undo()
    split = train.main(finetune_args(data_dir, base_ckpt, tmp_path / "split", "--init_from=resume"))
    assert logged_losses(tmp_path / "whole") == logged_losses(tmp_path / "split")
    for (name, a), b in zip(whole.state_dict().items(), split.state_dict().values()):
        assert torch.equal(a, b), name


def test_adapter_checkpoint_refuses_another_base(data_dir, base_ckpt, tmp_path):
    train.main(finetune_args(data_dir, base_ckpt, tmp_path / "ft", "--adapter.kind=lora"))
    other = checkpoint.load_base(base_ckpt)
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    state = torch.load(base_ckpt, weights_only=False)
    state["model"] = other.state_dict()
    checkpoint.save_checkpoint(str(tmp_path / "other.pt"), state)
    with pytest.raises(ValueError, match="not the same base model"):
        checkpoint.load_checkpoint(str(tmp_path / "ft" / "ckpt.pt"), base=str(tmp_path / "other.pt"))
