"""experiment.py: a tiny grid (two methods, two seeds, a few steps) runs, reports and is skipped on a second
call; the statistics against hand-computed cases."""

import json
import math
import os

import pytest

import experiment

FINETUNE = """mode = "finetune"
batch_size = 4
max_iters = 4
eval_interval = 4
eval_iters = 2
log_interval = 2
device = "cpu"
dtype = "float32"
[adapter]
targets = ["attn.c_attn", "mlp.c_fc"]
dropout = 0.0
contrastive_tokens = 16
"""


def grid_args(tmp_path, data_dir, base_ckpt, *extra):
    preset = tmp_path / "finetune.toml"
    preset.write_text(FINETUNE)
    return [f"--data_dir={data_dir}", f"--base={base_ckpt}", f"--work_dir={tmp_path / 'runs'}",
            f"--out_dir={tmp_path / 'report'}", f"--finetune_preset={preset}", "--methods=lora,moelora",
            "--seeds=2", "--adapter_lrs=1e-3,3e-3", "--eval_items=3", "--parallel=2", *extra]


def test_a_tiny_grid_runs_reports_and_is_skipped_when_run_again(tmp_path, data_dir, base_ckpt, capsys):
    args = grid_args(tmp_path, data_dir, base_ckpt)
    results = experiment.main(args)
    out = capsys.readouterr().out
    assert "sweep: 4 runs, 0 done before, 4 to run" in out and "table: 4 runs, 0 done before, 4 to run" in out
    # the picked rate is the sweep's lowest validation loss, per method
    for method in ("lora", "moelora"):
        sweep = {}
        for lr in (1e-3, 3e-3):
            with open(tmp_path / "runs" / "sweep" / method / f"lr{lr:g}_seed0" / "result.json") as f:
                sweep[lr] = json.load(f)["val_loss"]
        assert results["picked_lr"][method] == min(sweep, key=sweep.get)
        assert results["methods"][method]["seeds"] == [1, 2]
    # the difference row is the mean of the paired per-seed differences
    lora, moe = results["methods"]["lora"]["scores"], results["methods"]["moelora"]["scores"]
    diff = results["methods"]["moelora"]["minus_lora"]["avg"]
    assert diff["mean"] == pytest.approx(sum(m["avg"] - l["avg"] for m, l in zip(moe, lora)) / 2)
    with open(tmp_path / "runs" / "table" / "moelora" / f"lr{results['picked_lr']['moelora']:g}_seed1" / "result.json") as f:
        load = json.load(f)["routing"]["load"]  # [task][layer][expert]
    assert all(sum(layer) == pytest.approx(1) for task in load for layer in task)
    routing = results["methods"]["moelora"]["routing"]["per_layer"]
    assert len(routing["mi_bits"]) == 2  # one block, two adapted linears
    assert all(0 <= v <= 1 + 1e-9 for v in routing["mi_normalised"])
    report = (tmp_path / "report" / "results.md").read_text()
    assert "| LoRA r16 | 2 |" in report and "| MoELoRA 8 x r2, top-2 | 2 |" in report

    first, second = experiment.main(args + ["--reproduce=moelora"])  # one run again, alone: on a CPU, exactly
    assert (second["val_loss"], second["accuracy"]) == (first["val_loss"], first["accuracy"])
    assert "| validation loss |" in (tmp_path / "report" / "reproduce.md").read_text()
    stamps = {p: os.path.getmtime(p) for p in (tmp_path / "runs").rglob("result.json")}

    with pytest.raises(ValueError, match=r"lr0.001_seed0/result.json was run with other settings"):
        experiment.main(args + ["--train_args=--max_iters=6"])  # a changed setting never reuses a result
    experiment.main(args)  # again: every run is finished, none runs
    out = capsys.readouterr().out
    assert "sweep: 4 runs, 4 done before, 0 to run" in out and "table: 4 runs, 4 done before, 0 to run" in out
    assert {p: os.path.getmtime(p) for p in (tmp_path / "runs").rglob("result.json")} == stamps


def test_a_failed_run_is_named_and_the_others_go_on(tmp_path, data_dir, base_ckpt):
    args = grid_args(tmp_path, data_dir, base_ckpt, "--methods=lora", "--adapter_lrs=1e-3",
                     f"--train_args=--init_from={tmp_path / 'gone.pt'}")  # a base that is not there
    with pytest.raises(ChildProcessError, match=r"1 runs failed; their output: .*sweep/lora/lr0.001_seed0/output.log"):
        experiment.main(args)
    log = (tmp_path / "runs" / "sweep" / "lora" / "lr0.001_seed0" / "output.log").read_text()
    assert "gone.pt" in log and "Traceback" not in log  # train.py's one-line error


def test_mutual_information_against_hand_computed_cases():
    # two tasks with equal tokens, four experts, top-2: each task on its own pair of experts
    bits, normalised = experiment.task_expert_information([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], [10, 10], top_k=2)
    # P(t, e) = 1/4 on four cells, P(t) = 1/2, P(e) = 1/4: I = 4 * 1/4 * log2((1/4) / (1/8)) = 1 bit; the
    # maximum min(H(T) = 1, log2(4 / 2) = 1) = 1
    assert bits == pytest.approx(1.0) and normalised == pytest.approx(1.0)
    # the same load for both tasks: nothing about the task in the expert
    assert experiment.task_expert_information([[0.25] * 4, [0.25] * 4], [3, 7], top_k=2) == (pytest.approx(0), 0.0)
    # unequal tokens, partial overlap: P(t) = (1/4, 3/4); P(e | t1) = (1/2, 1/2, 0), P(e | t2) = (0, 1/2, 1/2)
    load, tokens = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], [1, 3]
    p_e = [1 / 8, 1 / 2, 3 / 8]
    by_hand = (1 / 8) * math.log2(0.5 / p_e[0]) + (1 / 8) * math.log2(0.5 / p_e[1]) \
        + (3 / 8) * math.log2(0.5 / p_e[1]) + (3 / 8) * math.log2(0.5 / p_e[2])
    most = min(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)), math.log2(3 / 1))
    bits, normalised = experiment.task_expert_information(load, tokens, top_k=1)
    assert bits == pytest.approx(by_hand) and normalised == pytest.approx(by_hand / most)


def test_paired_difference_against_hand_computed_cases():
    # differences 1, 2, 3: mean 2, sd 1, half-width t_{0.975}(2) * 1 / sqrt(3) = 4.303 / 1.732
    mean, half = experiment.paired_difference([11, 12, 13], [10, 10, 10])
    assert mean == pytest.approx(2) and half == pytest.approx(4.303 / math.sqrt(3))
    # pairing matters: the same values, a constant difference, no spread
    assert experiment.paired_difference([1, 5, 9], [0, 4, 8]) == (pytest.approx(1), pytest.approx(0))
    assert experiment.paired_difference([3.0], [1.0]) == (2.0, None)  # one seed: no interval


def test_expert_output_cosines_equal_the_direct_computation():
    import torch

    import moelora
    torch.manual_seed(0)
    layer = moelora.MoELoRALinear(torch.nn.Linear(6, 5), n_experts=3, top_k=2, r=2, alpha=4)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(7, 6)
    outputs = torch.einsum("nd,erd->ner", x, layer.lora_A)
    outputs = torch.einsum("ner,eor->neo", outputs, layer.lora_B)  # (N, E, d_out): each expert's B_e A_e x
    cos = torch.nn.functional.cosine_similarity
    by_hand = torch.stack([cos(outputs[:, e], outputs[:, f], dim=-1) for e, f in ((0, 1), (0, 2), (1, 2))]).mean(0)
    import evaluate
    torch.testing.assert_close(evaluate.expert_output_cosines(layer, x), by_hand)


def test_routing_heatmaps_of_many_layers_show_a_spread_of_them(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the plot extra (pip install -e '.[plot]') draws the figures")
    import matplotlib.figure

    import evaluate
    tasks, n_layers, E = ["a", "b", "c"], 40, 4
    routing = {"tasks": tasks, "layers": [f"h.{i // 4}.{i % 4}" for i in range(n_layers)],
               "load": [[[1 / E] * E for _ in range(n_layers)] for _ in tasks],
               "entropy": [[0.5] * n_layers for _ in tasks]}
    drawn = {}
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (drawn.setdefault("images", [im for ax in fig.axes for im in ax.images]),
                                              save(fig, *a, **k)))
    assert evaluate.plot_routing(routing, tmp_path / "routing.png") and (tmp_path / "routing.png").exists()
    # MAX_LOAD_PANELS load panels (tasks x experts) and the entropy panel (tasks x every layer)
    shapes = [im.get_array().shape for im in drawn["images"]]
    assert shapes == [(3, E)] * evaluate.MAX_LOAD_PANELS + [(3, n_layers)]
