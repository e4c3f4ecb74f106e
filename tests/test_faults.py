"""train.py, evaluate.py, data.prepare and checkpoint.py under faults and bad inputs (issue 16), one class at
a time: nothing is lost (non-finite states never saved, the base's fingerprint checked on resume, one run per
out_dir, kill -9 during saves), nothing passes silently (another tokenizer's data, settings a run would ignore,
a finished run, a moved schedule, a moved project), and every expected error is one line naming the setting
or the file. CPU only, on the tiny model and the small build of conftest.py."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import cli
import evaluate
import train
from data.prepare import PrepareConfig
from data.tokenizer import load_tokenizer, tokenizer_hash
from model import GPT, GPTConfig
from training import TINY_MODEL, finetune_args, logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def finetuned(data_dir, base_ckpt, tmp_path_factory):
    """A LoRA run of 3 steps (of a schedule over 6): its out_dir."""
    out = tmp_path_factory.mktemp("finetuned")
    train.main(finetune_args(data_dir, base_ckpt, out, "--adapter.kind=lora", "--max_iters=3", "--lr_decay_iters=6"))
    return out


def copy_data(data_dir, to):
    shutil.copytree(data_dir, to)
    return str(to)


# ----------------------------------------------------------------------------------------------------------
# nothing lost

def test_weights_that_blow_up_before_an_evaluation_are_not_saved(data_dir, base_ckpt, tmp_path, monkeypatch):
    """Step 6 ends on an evaluation and its update makes the weights NaN (an infinite learning rate): the run
    stops without saving them, and the checkpoint of step 3 resumes."""
    lr_at = train.lr_at
    monkeypatch.setattr(train, "lr_at", lambda step, cfg: float("inf") if step == 5 else lr_at(step, cfg))
    with pytest.raises(FloatingPointError, match="validation loss is not finite after step 6.*without saving"):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path, "--adapter.kind=lora"))
    ckpt = checkpoint.read(str(tmp_path / "ckpt.pt"))  # read() refuses non-finite weights
    assert ckpt["iter_num"] == 3
    monkeypatch.undo()
    train.main(finetune_args(data_dir, base_ckpt, tmp_path, "--init_from=resume"))
    assert checkpoint.read(str(tmp_path / "ckpt.pt"))["iter_num"] == 6


def test_training_state_refuses_weights_that_are_not_finite(tmp_path):
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    cfg = train.TrainConfig(mode="pretrain", out_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="weights after step 7 are not finite"):
        checkpoint.training_state(model, torch.optim.AdamW(model.parameters()), cfg, 7, 1.0, None, {"vocab_size": 64})


def test_resume_checks_the_base_fingerprint(data_dir, base_ckpt, tmp_path):
    """The base at the path an adapter run names changed since: resuming refuses, and rewrites nothing."""
    base = tmp_path / "base.pt"
    shutil.copy(base_ckpt, base)
    train.main(finetune_args(data_dir, str(base), tmp_path / "ft", "--adapter.kind=lora", "--max_iters=3",
                             "--lr_decay_iters=6"))
    saved = (tmp_path / "ft" / "ckpt.pt").read_bytes()
    state = torch.load(base, weights_only=False)
    state["model"]["transformer.h.0.mlp.c_fc.weight"].add_(1.0)
    torch.save(state, base)
    with pytest.raises(ValueError, match="not the same base model"):
        train.main(finetune_args(data_dir, str(base), tmp_path / "ft", "--init_from=resume"))
    assert (tmp_path / "ft" / "ckpt.pt").read_bytes() == saved


def test_a_second_ctrl_c_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with train.StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first asks the loop to stop after its step
        assert stop.asked
        with pytest.raises(KeyboardInterrupt, match="stopped at once, without saving"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # (the handler runs before this ends)
    assert signal.getsignal(signal.SIGINT) is before


def test_one_run_per_out_dir_and_a_stale_lock_is_taken_over(data_dir, base_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    held = checkpoint.OutDirLock(str(out), resuming=False)
    with pytest.raises(OSError, match=f"{out} is in use by another run \\(pid {os.getpid()} on "):
        train.main(finetune_args(data_dir, base_ckpt, out))
    held.release()
    # a process that holds the lock and is killed: the system drops the lock, its note stays in the file
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 99 on elsewhere'); f.flush(); "
                               "print('held', flush=True); time.sleep(60)", str(out / checkpoint.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OSError, match="in use by another run \\(pid 99 on elsewhere\\)"):
        checkpoint.OutDirLock(str(out), resuming=False)
    holder.kill()
    holder.wait()
    (out / "ckpt.pt.123.abcd.tmp").write_bytes(b"half a save")
    checkpoint.OutDirLock(str(out), resuming=False).release()
    assert "taking over" in capsys.readouterr().err and not (out / "ckpt.pt.123.abcd.tmp").exists()


def test_a_new_run_never_writes_over_a_checkpoint(data_dir, base_ckpt, finetuned):
    before = (finetuned / "ckpt.pt").read_bytes()
    with pytest.raises(OSError, match="already holds a run's checkpoint: continue it with --init_from=resume"):
        train.main(finetune_args(data_dir, base_ckpt, finetuned, "--adapter.kind=moelora"))
    assert (finetuned / "ckpt.pt").read_bytes() == before


def test_a_full_disk_leaves_the_last_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(path, {"iter_num": 1})

    def disk_full(obj, f):  # what torch's zip writer raises when the disk fills
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=f"could not write {path} .*file write failed.*intact"):
        checkpoint.save_checkpoint(path, {"iter_num": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["iter_num"] == 1 and os.listdir(tmp_path) == ["ckpt.pt"]


def test_kill_9_during_saves_never_breaks_the_checkpoint(data_dir, tmp_path):
    """train.py saves every step; it is killed (SIGKILL) at random moments, three times, and resumed each time:
    ckpt.pt always loads, the killed run's lock and temporary files never stop the next, and the run ends
    with the losses of one that was never killed."""
    args = ["--mode=pretrain", f"--data_dir={data_dir}", "--batch_size=2", "--max_iters=30", "--eval_interval=1",
            "--eval_iters=1", "--log_interval=1", "--seed=3", *TINY_MODEL]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed processes run: the same sums in the same order
    try:
        train.main(args + [f"--out_dir={tmp_path / 'whole'}"])
    finally:
        torch.set_num_threads(threads)
    out, draw = tmp_path / "killed", random.Random(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for attempt in range(3):
        resume = ["--init_from=resume"] if (out / "ckpt.pt").exists() else []
        proc = subprocess.Popen([sys.executable, "train.py", *args, f"--out_dir={out}", *resume], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # killed at a random moment 1-5 logged steps after it starts (then a random part of a step or two):
        # counted in steps, not seconds, so that it falls well before the end however fast the machine is
        first, wait = None, draw.randint(1, 5)
        while True:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "train.py ended before it was killed"
            if line.startswith("iter") and "val" not in line:
                step = int(line.split()[1])
                first = step if first is None else first
                if step >= first + wait:
                    break
        time.sleep(draw.uniform(0.0, 0.02))
        proc.kill()
        proc.wait()
        ckpt = checkpoint.read(str(out / "ckpt.pt"))
        assert 1 <= ckpt["iter_num"] < 30, ckpt["iter_num"]
    subprocess.run([sys.executable, "train.py", *args, f"--out_dir={out}", "--init_from=resume"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    assert logged_losses(tmp_path / "whole") == logged_losses(out)
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl", checkpoint.LOCK_FILE]


# ----------------------------------------------------------------------------------------------------------
# nothing passes silently

@pytest.fixture(scope="module")
def other_tokenizer_data(data_dir, tmp_path_factory):
    """The small build with two tokens' ranks swapped in its tokenizer, meta.json's hash made to fit."""
    d = copy_data(data_dir, tmp_path_factory.mktemp("other") / "data")
    path = os.path.join(d, "tokenizer.tiktoken")
    lines = open(path).read().splitlines()
    (a, ra), (b, rb) = lines[300].split(), lines[301].split()
    lines[300], lines[301] = f"{b} {ra}", f"{a} {rb}"
    open(path, "w").write("\n".join(lines) + "\n")
    meta = json.load(open(os.path.join(d, "meta.json")))
    meta["tokenizer_hash"] = tokenizer_hash(load_tokenizer(d))
    json.dump(meta, open(os.path.join(d, "meta.json"), "w"))
    return d


def test_data_of_another_tokenizer_is_refused(data_dir, base_ckpt, finetuned, other_tokenizer_data, tmp_path):
    other = other_tokenizer_data
    with pytest.raises(ValueError, match="was trained on data of another tokenizer"):  # fine-tuning a base
        train.main(finetune_args(other, base_ckpt, tmp_path / "ft"))
    with pytest.raises(ValueError, match="was trained on data of another tokenizer"):  # resuming
        train.main(finetune_args(other, base_ckpt, finetuned, "--init_from=resume", f"--data_dir={other}"))
    with pytest.raises(ValueError, match="was trained on data of another tokenizer"):  # evaluating
        evaluate.main([f"--ckpt={finetuned / 'ckpt.pt'}", f"--data_dir={other}", f"--out={tmp_path}"])
    assert checkpoint.read(str(finetuned / "ckpt.pt"))["data"]["tokenizer_hash"] == \
        json.load(open(os.path.join(data_dir, "meta.json")))["tokenizer_hash"]


@pytest.mark.parametrize("argv,words", [
    (["--mode=pretrain", "--init_from=scratch", "--adapter.kind=lora"], "adapter.kind .*apply to mode=finetune"),
    (["--mode=pretrain", "--init_from=scratch", "--eval_items=3"], "eval_items .*apply to mode=finetune"),
    (["--block_size=64"], "would not use \\(the model's shape comes from init_from\\): block_size=64 \\(the base "
                          "has 192\\)"),
    (["--n_layer=8", "--n_embd=64", "--block_size=192"], "n_layer=8 \\(the base has 1\\); n_embd=64 \\(the base has 32\\)$"),
    (["--base=elsewhere.pt"], "base \\(it names a moved base for init_from=resume\\)"),
    (["--max_iters=0"], "max_iters=0 \\(expected >= 1\\)"),
])
def test_settings_a_run_would_ignore_are_refused(data_dir, base_ckpt, tmp_path, argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path, *argv))
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.mark.parametrize("argv,words", [
    ([], "at step 3, which max_iters=3 does not go past: pass a larger --max_iters"),
    (["--max_iters=6", "--lr_decay_iters=0"], "would move the learning-rate schedule.*--lr_decay_iters=3 to keep "
                                              "it.*--lr_decay_iters=6 to stretch it"),
    (["--max_iters=6", "--adapter.r=8"], "a resumed run keeps .*adapter.r=8 \\(the run has 2\\)"),
    (["--max_iters=6", "--n_layer=3"], "a resumed run keeps .*n_layer=3 \\(the run has 1\\)"),
])
def test_resume_refuses_what_it_cannot_do(data_dir, base_ckpt, tmp_path, argv, words):
    out = tmp_path / "run"
    train.main(finetune_args(data_dir, base_ckpt, out, "--adapter.kind=lora", "--max_iters=3"))
    with pytest.raises(cli.ConfigError, match=words):
        train.main(["--init_from=resume", f"--out_dir={out}", *argv])


def test_a_moved_project_uses_its_own_base_and_data(data_dir, base_ckpt, tmp_path):
    """A project (data, base, fine-tuned run) moved to another directory: evaluation and resume read the
    moved copies (the original paths are gone); a base moved on its own is named, and --base finds it."""
    a = tmp_path / "a"
    copy_data(data_dir, a / "data")
    (a / "base").mkdir()
    shutil.copy(base_ckpt, a / "base" / "ckpt.pt")
    train.main(finetune_args(str(a / "data"), str(a / "base" / "ckpt.pt"), a / "ft", "--adapter.kind=lora",
                             "--max_iters=2", "--lr_decay_iters=4", "--eval_interval=2"))
    b = tmp_path / "b"
    os.rename(a, b)
    ckpt = checkpoint.read(str(b / "ft" / "ckpt.pt"))
    assert ckpt["data"]["data_dir"] == str(b / "data") and ckpt["base"]["init_from"] == str(b / "base" / "ckpt.pt")
    train.main(["--init_from=resume", f"--out_dir={b / 'ft'}", "--max_iters=4"])
    assert checkpoint.read(str(b / "ft" / "ckpt.pt"))["iter_num"] == 4
    os.rename(b / "base", tmp_path / "base_elsewhere")
    with pytest.raises(FileNotFoundError, match="which does not exist: if it moved, pass its new path with --base="):
        evaluate.main([f"--ckpt={b / 'ft' / 'ckpt.pt'}", "--max_items=1", "--routing=0"])
    report = evaluate.main([f"--ckpt={b / 'ft' / 'ckpt.pt'}", "--max_items=1", "--routing=0",
                            f"--base={tmp_path / 'base_elsewhere' / 'ckpt.pt'}"])
    assert len(report["ft"]["accuracy"]) == 11


@pytest.mark.parametrize("argv,words", [
    (["--max_items=-1"], "max_items=-1 \\(expected >= 0\\)"),
    (["--batch_size=0"], "batch_size=0 \\(expected >= 1\\)"),
    (["--device=gpu"], "device='gpu' \\(expected auto, cpu, cuda or cuda:N\\)"),
])
def test_evaluation_settings_are_checked(finetuned, argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        evaluate.main([f"--ckpt={finetuned / 'ckpt.pt'}", *argv])


def test_evaluation_refuses_ambiguous_or_unused_inputs(base_ckpt, finetuned, tmp_path):
    for d in ("x/run", "y/run"):
        (tmp_path / d).mkdir(parents=True)
        shutil.copy(finetuned / "ckpt.pt", tmp_path / d / "ckpt.pt")
    with pytest.raises(cli.ConfigError, match="would share a row name"):
        evaluate.main([f"--ckpt={tmp_path / 'x/run/ckpt.pt'},{tmp_path / 'y/run/ckpt.pt'}"])
    with pytest.raises(ValueError, match="is a full checkpoint: it has no base"):
        evaluate.main([f"--ckpt={base_ckpt}", f"--base={base_ckpt}", f"--out={tmp_path}"])


# ----------------------------------------------------------------------------------------------------------
# every bad input a one-line error naming the setting or the file

@pytest.mark.parametrize("argv,words", [
    (["--batch_size=0"], "batch_size=0 \\(expected >= 1\\)"),
    (["--grad_accum=0"], "grad_accum=0 \\(expected >= 1\\)"),
    (["--log_interval=0", "--eval_interval=-2"], "log_interval=0 .*; eval_interval=-2 \\(expected >= 1\\)"),
    (["--eval_iters=0"], "eval_iters=0"),
    (["--lr=0"], "lr=0.0 \\(expected > 0\\)"),
    (["--lr=nan"], "lr=nan \\(expected a finite float\\)"),
    (["--lr=1e-3", "--min_lr=1e-2"], "min_lr=0.01 must not exceed lr=0.001"),
    (["--warmup_iters=-1"], "warmup_iters=-1 \\(expected >= 0\\)"),
    (["--dropout=1"], "dropout=1.0 \\(expected in \\[0, 1\\)\\)"),
    (["--beta2=1.5"], "beta2=1.5"),
    (["--seed=-1"], "seed=-1 \\(expected in \\[0, 4294967295\\]\\)"),
    (["--dtype=half"], "dtype='half' \\(expected one of 'auto', 'float32', 'bfloat16'\\)"),
    (["--mode=train"], "mode='train' \\(expected one of 'pretrain', 'finetune'\\)"),
    (["--device=gpu"], "device='gpu'"),
    (["--n_embd=30", "--n_head=4"], "n_embd=30 must be a multiple of n_head=4"),
    (["--adapter.r=0"], "adapter.r=0 \\(expected >= 1\\)"),
    (["--adapter.top_k=9"], "adapter.top_k=9 \\(expected at most adapter.n_experts=8\\)"),
    (["--adapter.contrastive=comoe", "--adapter.top_k=1"], "adapter.contrastive='comoe' .*needs adapter.top_k >= 2"),
    (["--adapter.impl=fast"], "adapter.impl='fast' \\(expected one of 'auto', 'cuda', 'ref'\\)"),
    (["--adapter.contrastive=infonce"], "adapter.contrastive='infonce' \\(expected one of 'expert', 'comoe', 'none'\\)"),
    (["--adapter.dropout=1.5"], "adapter.dropout=1.5"),
    (["--adapter.router=hash"], "adapter.router='hash' \\(expected one of 'topk'\\)"),
    (["--adapter.contrastive_tau=0"], "adapter.contrastive_tau=0.0 \\(expected > 0\\)"),
    (["--adapter.targets="], "adapter.targets=\\(\\) \\(expected one or more module-name patterns\\)"),
])
def test_bad_values_name_the_setting(argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        cli.parse(train.TrainConfig, argv)


@pytest.mark.parametrize("argv,words", [
    (["--scale=0"], "scale=0.0 \\(expected > 0\\)"),
    (["--vocab_size=100"], "vocab_size=100 \\(expected in \\[257, 65536\\]\\)"),
])
def test_bad_prepare_values_name_the_setting(argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        cli.parse(PrepareConfig, argv)


def test_no_cuda_is_one_line_before_any_work(data_dir, base_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(cli.ConfigError, match="device=cuda, but CUDA is not available here"):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path, "--device=cuda"))
    with pytest.raises(cli.ConfigError, match="adapter.impl=cuda runs the CUDA kernel, which needs device=cuda"):
        train.main(finetune_args(data_dir, base_ckpt, tmp_path, "--adapter.impl=cuda"))
    assert os.listdir(tmp_path) == []


def test_damaged_data_is_named_before_training(data_dir, base_ckpt, tmp_path):
    """A token file 20 bytes short (it used to train until a batch reached its end), offsets that overrun the
    tokens, an odd-sized file, a meta.json that is not JSON: each an error naming the file, at the start."""
    def damaged(name, damage):
        d = copy_data(data_dir, tmp_path / name)
        damage(d)
        return d

    cut = damaged("short", lambda d: os.truncate(f"{d}/finetune_train.bin", os.path.getsize(f"{d}/finetune_train.bin") - 20))
    with pytest.raises(ValueError, match="finetune_train.bin holds .* tokens, meta.json says"):
        train.main(finetune_args(cut, base_ckpt, tmp_path / "o1"))

    def overrun(d):
        idx = np.fromfile(f"{d}/finetune_val_idx.bin", dtype=np.int64)
        idx[-1] += 1000
        idx.tofile(f"{d}/finetune_val_idx.bin")
    with pytest.raises(ValueError, match="finetune_val_idx.bin's offsets do not run from 0 up to"):
        train.main(finetune_args(damaged("idx", overrun), base_ckpt, tmp_path / "o2"))
    odd = damaged("odd", lambda d: os.truncate(f"{d}/pretrain_val.bin", os.path.getsize(f"{d}/pretrain_val.bin") - 1))
    with pytest.raises(ValueError, match="pretrain_val.bin holds .* bytes, not a whole number of uint16s"):
        train.main(["--mode=pretrain", f"--data_dir={odd}", f"--out_dir={tmp_path / 'o3'}", *TINY_MODEL])
    bad_meta = damaged("meta", lambda d: open(f"{d}/meta.json", "w").write("{not json"))
    with pytest.raises(ValueError, match="meta.json cannot be read"):
        train.main(finetune_args(bad_meta, base_ckpt, tmp_path / "o4"))


def test_damaged_checkpoints_and_presets_are_named(finetuned, tmp_path):
    cut = tmp_path / "cut" / "ckpt.pt"
    cut.parent.mkdir()
    data = (finetuned / "ckpt.pt").read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"checkpoint {cut} cannot be read, truncated or not a checkpoint"):
        train.main(["--init_from=resume", f"--out_dir={cut.parent}"])
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a checkpoint train.py wrote \\(it lacks kind"):
        evaluate.main([f"--ckpt={tmp_path / 'foreign.pt'}"])
    with pytest.raises(FileNotFoundError, match="a directory: name the ckpt.pt in it"):
        evaluate.main([f"--ckpt={finetuned}"])
    preset = tmp_path / "p.toml"
    preset.write_bytes(b"max_iters = \xff\n")
    with pytest.raises(cli.ConfigError, match=f"preset {preset} is not valid TOML"):
        cli.parse(train.TrainConfig, [str(preset)])
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(cli.ConfigError, match="dir.toml cannot be read"):
        cli.parse(train.TrainConfig, [str(tmp_path / "dir.toml")])


def test_damaged_hugging_face_checkpoints_are_named(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json is not a GPT-2 config.json \\(JSONDecodeError"):
        checkpoint.load_base(str(hf))
    (hf / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 64}))
    with pytest.raises(ValueError, match="config.json is not a GPT-2 config.json \\(KeyError: 'n_positions'"):
        checkpoint.load_base(str(hf))
    (hf / "config.json").write_text(json.dumps({"n_positions": 16, "n_layer": 1, "n_head": 2, "n_embd": 32,
                                                "vocab_size": 64}))
    (hf / "model.safetensors").write_bytes(b"\x10" + bytes(20))
    with pytest.raises(ValueError, match="model.safetensors cannot be read, truncated or not a checkpoint"):
        checkpoint.load_base(str(hf))


def test_scripts_print_one_line_and_exit_1(finetuned, tmp_path):
    """The entry points, as a user runs them: an expected error is 'error: ...' on one line, no traceback."""
    for cmd in (["evaluate.py", f"--ckpt={finetuned / 'ckpt.pt'}", "--max_items=-1"],
                ["-m", "data.prepare", f"--out={tmp_path}", "--vocab_size=100"]):
        result = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


def test_run_keeps_tracebacks_for_bugs(capsys):
    def bug(argv):
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        cli.run(bug)
    for error, code in ((ValueError("bad value"), 1), (OSError("disk"), 1), (KeyboardInterrupt("stopped"), 130)):
        def fails(argv, error=error):
            raise error
        with pytest.raises(SystemExit) as info:
            cli.run(fails)
        assert info.value.code == code
    assert capsys.readouterr().err.splitlines()[:2] == ["error: bad value", "error: disk"]


def test_an_encoding_tiktoken_cannot_load_is_an_expected_error(monkeypatch):
    """Offline, tiktoken cannot fetch GPT-2's files: the error says how to bring them (test_data.py), and is an
    OSError, which the scripts print without a traceback."""
    import tiktoken
    from data import tokenizer

    def offline(name):
        raise ConnectionError("no internet")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(OSError, match="TIKTOKEN_CACHE_DIR"):
        tokenizer.get_encoding("gpt2")
