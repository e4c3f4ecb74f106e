"""Helpers for the tests that train: the tiny model's settings, a fine-tuning command line, the losses a run
logged, and a forward that fails on purpose (a NaN loss, or Ctrl-C)."""

import json
import os
import signal

import model

TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=192", "--device=cpu", "--dtype=float32"]


def finetune_args(data_dir, base_ckpt, out, *extra):
    return ["--mode=finetune", f"--init_from={base_ckpt}", f"--data_dir={data_dir}", f"--out_dir={out}",
            "--batch_size=4", "--max_iters=6", "--eval_interval=3", "--eval_iters=2", "--log_interval=1",
            "--adapter.r=2", "--adapter.n_experts=4", "--adapter.top_k=2", "--device=cpu", "--dtype=float32", *extra]


def logged_losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def failing_forward(monkeypatch, at_call, failure):
    """Make the model's forward fail on its at_call-th training call: a NaN loss, or a Ctrl-C (a real SIGINT
    to this process, in the middle of the step, as a user's would arrive)."""
    calls = {"n": 0}
    forward = model.GPT.forward

    def patched(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                if failure == "nan":
                    return logits, loss * float("nan")
                os.kill(os.getpid(), signal.SIGINT)
        return logits, loss

    monkeypatch.setattr(model.GPT, "forward", patched)
