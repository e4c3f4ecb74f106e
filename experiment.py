"""
The paper's comparison on the bundled tasks: LoRA against MoELoRA at equal trainable parameters, with its
ablations, a learning-rate sweep, several seeds, paired confidence intervals, and how the routing specialises.

    python experiment.py config/paper.toml                        # the whole grid (resumable)
    python experiment.py config/paper.toml --deadline_s=540       # start no run that would end after 9 minutes
    python experiment.py config/paper.toml --report_only=True     # the report from the runs finished so far
    python experiment.py config/paper.toml --methods=lora,moelora --seeds=2
    python experiment.py config/paper.toml --reproduce=moelora    # its seed-1 run again, alone, compared
    python experiment.py config/paper.toml --base=out/demo/base/ckpt.pt --methods=lora,moelora --out_dir=out/cpu \
        --work_dir=out/cpu --train_args=--cuda_graph=False,--max_iters=200 --parallel=1   # a CPU, the demo base

In order:
  1. the data (data.prepare) and the base model (train.py, mode=pretrain) once, into work_dir (or --base=ckpt);
  2. the sweep: every method at each of its learning rates on sweep_seed, the rate picked by validation loss;
  3. the table: every method at its picked rate on seeds 1..seeds, evaluated on the test sets, its routing
     measured (MoELoRA);
  4. the report in out_dir: results.md (the tables), results.json (every figure), routing.png.
Each run is a child process (python experiment.py --cell=DIR: train.py's main, then the evaluation) that writes
DIR/result.json last; a run with a result.json is skipped, so the grid can be split over several calls. Up to
`parallel` runs go at once: models this small leave most of a GPU idle, and the runs' Python overheads overlap.
METHODS says what each method changes in the fine-tuning preset: add yours there.
"""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass

import cli
import train


def methods(R):
    """name -> (label, train.py arguments, which learning-rate grid): at LoRA rank R, MoELoRA's 8 experts of
    rank R/8 hold as many parameters (its router's come on top, reported apart); LoRA of rank R/4 does as
    much per-token work as MoELoRA's two chosen experts. alpha / r = 2 everywhere."""
    def lora(r):
        return ["--adapter.kind=lora", f"--adapter.r={r}", f"--adapter.alpha={2 * r}"]
    moe = ["--adapter.kind=moelora", "--adapter.n_experts=8", "--adapter.top_k=2", f"--adapter.r={R // 8}",
           f"--adapter.alpha={2 * (R // 8)}"]
    return {
        "lora": (f"LoRA r{R}", lora(R), "adapter"),
        "moelora": (f"MoELoRA 8 x r{R // 8}, top-2", moe, "adapter"),
        "no_contrastive": ("  without the contrastive loss", moe + ["--adapter.contrastive=none"], "adapter"),
        "no_balance": ("  without the balance loss", moe + ["--adapter.balance_coef=0"], "adapter"),
        "comoe": ("  CoMoE's contrastive loss", moe + ["--adapter.contrastive=comoe"], "adapter"),
        "lora_quarter": (f"LoRA r{R // 4} (MoELoRA's per-token rank)", lora(R // 4), "adapter"),
        "full": ("full fine-tuning", ["--adapter.kind=none"], "full"),
    }


METHODS = tuple(methods(16))


@dataclass
class ExperimentConfig:
    data_dir: str = "out/data"
    work_dir: str = "out/paper"  # the runs: checkpoints and logs (large; not committed)
    out_dir: str = "results/paper"  # the report (small; committed)
    base: str = ""  # a base model (ckpt.pt) to fine-tune; empty: pretrain one with base_preset into work_dir/base
    base_preset: str = "config/paper_pretrain.toml"
    finetune_preset: str = "config/paper_finetune.toml"
    train_args: tuple = ()  # more train.py arguments for every fine-tuning run, after the preset's
    rank: int = 16  # R, LoRA's rank
    methods: tuple = METHODS
    seeds: int = 3  # the table's seeds are 1..seeds
    sweep_seed: int = 0  # the sweep's seed, not one of the table's
    adapter_lrs: tuple = ("1e-3", "2e-3", "5e-3", "1e-2", "2e-2")  # the sweep's learning rates for adapters
    full_lrs: tuple = ("1e-4", "3e-4", "1e-3", "3e-3")  # and for full fine-tuning
    eval_items: int = 0  # test items per task (0: all)
    parallel: int = 4  # runs at once
    deadline_s: float = 0  # start no run expected to end after this many seconds (0: none)
    report_only: bool = False
    reproduce: str = ""  # a method: run its seed-1 table run again, alone, and compare (the grid must have run)
    cell: str = ""  # internal: run the one run described by this directory's spec.json

    def __post_init__(self):
        cli.check(self, {
            "rank": ((lambda r: r > 0 and r % 8 == 0), "a positive multiple of 8 (8 experts of rank R/8)"),
            "methods": ((lambda m: m and set(m) <= set(METHODS)), "a list of " + ", ".join(METHODS)),
            "seeds": cli.at_least(1), "parallel": cli.at_least(1), "eval_items": cli.at_least(0),
            "deadline_s": cli.at_least(0), "reproduce": cli.one_of("", *METHODS),
            "adapter_lrs": (_rates, "one or more positive numbers"), "full_lrs": (_rates, "one or more positive numbers"),
        })


def _rates(values):
    try:
        return len(values) > 0 and all(float(v) > 0 for v in values)
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------
# the grid: which runs, in which directories

def base_ckpt(cfg):
    return cfg.base or os.path.join(cfg.work_dir, "base", "ckpt.pt")


def sweep_cells(cfg):
    cells = []
    for name in cfg.methods:
        label, args, grid = methods(cfg.rank)[name]
        for lr in (cfg.adapter_lrs if grid == "adapter" else cfg.full_lrs):
            cells.append(_cell(cfg, "sweep", name, cfg.sweep_seed, float(lr), args, evaluate=False))
    return cells


def table_cells(cfg, picked):
    return [_cell(cfg, "table", name, seed, picked[name], methods(cfg.rank)[name][1], evaluate=True)
            for name in cfg.methods if name in picked for seed in range(1, cfg.seeds + 1)]


def _cell(cfg, phase, method, seed, lr, args, evaluate):
    run_dir = os.path.join(cfg.work_dir, phase, method, f"lr{lr:g}_seed{seed}")
    argv = [cfg.finetune_preset, *args, f"--init_from={base_ckpt(cfg)}", f"--data_dir={cfg.data_dir}",
            f"--seed={seed}", f"--lr={lr:g}", f"--min_lr={lr / 10:g}", *cfg.train_args,
            f"--out_dir={os.path.join(run_dir, 'train')}"]
    max_iters = cli.parse(train.TrainConfig, argv).max_iters  # for the progress lines
    return {"phase": phase, "method": method, "seed": seed, "lr": lr, "dir": run_dir, "train_argv": argv,
            "max_iters": max_iters,
            "evaluate": evaluate, "eval_items": cfg.eval_items, "data_dir": cfg.data_dir}


def result_of(cell):
    """The finished run's result.json, or None; a result of other settings in the run's place is an error
    rather than a stale number in the table."""
    path = os.path.join(cell["dir"], "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    ran = result["cell"]
    if (ran["train_argv"], ran["eval_items"]) != (cell["train_argv"], cell["eval_items"]):
        raise ValueError(f"{path} was run with other settings ({' '.join(ran['train_argv'])}, eval_items="
                         f"{ran['eval_items']}): remove that directory, or pass another --work_dir")
    return result


# ----------------------------------------------------------------------------------------------------
# one run (in its own process): train, then measure

def run_cell(run_dir):
    """Train the run described by run_dir/spec.json from scratch, evaluate it, write run_dir/result.json."""
    import torch

    import evaluate
    import moelora

    with open(os.path.join(run_dir, "spec.json")) as f:
        cell = json.load(f)
    shutil.rmtree(os.path.join(run_dir, "train"), ignore_errors=True)  # a run cut off earlier starts afresh
    cuda = torch.cuda.is_available()
    t0 = time.time()
    model = train.main(cell["train_argv"])
    result = {"cell": cell, "train_s": time.time() - t0,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
              "params": moelora.count_parameters(model)}
    with open(os.path.join(run_dir, "train", "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    result["val_loss"] = [r["val_loss"] for r in log if "val_loss" in r][-1]
    speeds = [r["tokens_per_s"] for r in log if "tokens_per_s" in r][1:]  # the first includes warm-up
    result["tokens_per_s"] = statistics.median(speeds) if speeds else None
    if cell["evaluate"]:
        t0 = time.time()
        device = next(model.parameters()).device
        # 160 prompts a batch: a task's whole test set (150 items) in one
        scored = evaluate.evaluate_tasks(model, cell["data_dir"], cell["eval_items"], device, batch_size=160)
        result["accuracy"] = scored["accuracy"]
        result["routing"] = evaluate.routing_by_task(model, cell["data_dir"], cell["eval_items"], device, 160)
        result["eval_s"] = time.time() - t0
    tmp = os.path.join(run_dir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, "result.json"))  # last: a run with a result.json is finished


# ----------------------------------------------------------------------------------------------------
# running the grid: up to `parallel` children at once, one line per finished run

class Grid:
    def __init__(self, cfg):
        self.cfg = cfg
        self.start = time.time()
        self.durations = []  # seconds per finished run, for the estimates
        self.failed = []

    def elapsed(self):
        return time.time() - self.start

    def can_start(self):
        """Whether a run started now should end before the deadline (by the median run so far)."""
        expected = statistics.median(self.durations) if self.durations else 0
        return not self.cfg.deadline_s or self.elapsed() + expected < self.cfg.deadline_s

    def run(self, cells, phase):
        todo = [c for c in cells if result_of(c) is None]
        print(f"[{self.clock()}] {phase}: {len(cells)} runs, {len(cells) - len(todo)} done before, {len(todo)} to "
              f"run, {self.cfg.parallel} at a time", flush=True)
        running, done, last_status, killed = {}, 0, time.time(), set()
        phase_start, run_seconds = time.time(), 0.0
        while todo or running:
            while todo and len(running) < self.cfg.parallel and self.can_start():
                cell = todo.pop(0)
                running[self.launch(cell)] = (cell, time.time())
            if not running:  # the deadline leaves no room for another run
                print(f"[{self.clock()}] deadline: {len(todo)} {phase} runs left for the next call", flush=True)
                return False
            time.sleep(0.5)
            for child, (cell, t0) in list(running.items()):
                if self.cfg.deadline_s and self.elapsed() > self.cfg.deadline_s + 60 and child.poll() is None:
                    child.kill()  # far past the deadline: it starts afresh next time
                    killed.add(child)
                if child.poll() is None:
                    continue
                del running[child]
                if child in killed:
                    print(f"[{self.clock()}] {_name(cell)}: stopped past the deadline, for the next call", flush=True)
                    continue
                done += 1
                run_seconds += time.time() - t0
                self.finished(cell, child.returncode, time.time() - t0, f"{done}/{done + len(todo) + len(running)}")
            if time.time() - last_status > 30 and running:
                last_status = time.time()
                for cell, _ in running.values():
                    print(f"    running {_name(cell)}: {_progress(cell)}", flush=True)
        if done:  # what running several at once gained: the runs' own time against the wall time they took
            wall = time.time() - phase_start
            with open(os.path.join(self.cfg.work_dir, "concurrency.jsonl"), "a") as f:
                f.write(json.dumps({"phase": phase, "runs": done, "parallel": self.cfg.parallel, "wall_s": wall,
                                    "run_s": run_seconds}) + "\n")
            print(f"[{self.clock()}] {phase}: {done} runs took {run_seconds:.0f} s together in {wall:.0f} s of wall "
                  f"time ({run_seconds / wall:.1f} at once on average)", flush=True)
        return not killed

    def check(self):
        if self.failed:
            raise ChildProcessError(f"{len(self.failed)} runs failed; their output: " +
                                    ", ".join(os.path.join(c["dir"], "output.log") for c in self.failed))

    def launch(self, cell):
        os.makedirs(cell["dir"], exist_ok=True)
        with open(os.path.join(cell["dir"], "spec.json"), "w") as f:
            json.dump(cell, f, indent=1)
        # the runs share the CPU: each its share of the threads (the GPU does their arithmetic)
        threads = str(max(1, (os.cpu_count() or 1) // self.cfg.parallel))
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads))
        with open(os.path.join(cell["dir"], "output.log"), "w") as output:  # the child keeps its own copy
            return subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--cell={cell['dir']}"],
                                    stdout=output, stderr=subprocess.STDOUT, env=env)

    def finished(self, cell, code, seconds, count):
        result = result_of(cell)
        if code != 0 or result is None:
            self.failed.append(cell)
            with open(os.path.join(cell["dir"], "output.log")) as f:
                tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
            print(f"[{self.clock()}] {count} {_name(cell)}: FAILED (exit {code}): {tail[0]}", flush=True)
            return
        self.durations.append(seconds)
        line = f"val loss {result['val_loss']:.4f}, {result['tokens_per_s'] or 0:,.0f} tok/s, {seconds:.0f} s"
        if "accuracy" in result:
            line += f", accuracy {100 * statistics.mean(result['accuracy'].values()):.1f}"
        print(f"[{self.clock()}] {count} {_name(cell)}: {line}", flush=True)

    def clock(self):
        s = int(self.elapsed())
        return f"{s // 60}m{s % 60:02d}s"


def _name(cell):
    return f"{cell['phase']} {cell['method']} lr={cell['lr']:g} seed={cell['seed']}"


def _progress(cell):
    """step, tok/s and time left of a run in flight, from the last line of its log."""
    try:
        with open(os.path.join(cell["dir"], "train", "log.jsonl")) as f:
            last = [json.loads(line) for line in f if "tokens_per_s" in line][-1]
    except (OSError, IndexError, ValueError):
        return "starting"
    left = (cell["max_iters"] - last["iter"]) * last["ms_per_iter"] / 1000
    return f"step {last['iter']}/{cell['max_iters']}, {last['tokens_per_s']:,.0f} tok/s, {left:.0f} s left"


def pretrain_base(cfg):
    """work_dir/base/ckpt.pt, pretrained with base_preset unless there (a run cut off leaves only base.tmp)."""
    path = base_ckpt(cfg)
    if os.path.exists(path):
        return
    tmp = os.path.join(cfg.work_dir, "base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"pretraining the base with {cfg.base_preset} into {os.path.dirname(path)}", flush=True)
    done = subprocess.run([sys.executable, "train.py", cfg.base_preset, f"--data_dir={cfg.data_dir}",
                           f"--out_dir={tmp}"])
    if done.returncode:
        raise ChildProcessError(f"pretraining the base failed (exit {done.returncode}); its output is above")
    os.replace(tmp, os.path.dirname(path))


def probe_base(cfg):
    """How often the base looks up what the rationales need (dev/probe_lookup.py), once, in work_dir."""
    path = os.path.join(cfg.work_dir, "base_probe.json")
    if not os.path.exists(path):
        from dev import probe_lookup
        lookup = probe_lookup.main([f"--ckpt={base_ckpt(cfg)}", f"--data_dir={cfg.data_dir}"])
        os.makedirs(cfg.work_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"lookup": lookup}, f)
    with open(path) as f:
        return json.load(f)


def pick_rates(cfg, cells):
    """The learning rate with the lowest validation loss, per method, over the sweep's finished runs."""
    best = {}  # method -> (val loss, lr)
    for cell in cells:
        if (result := result_of(cell)) is not None:
            best[cell["method"]] = min(best.get(cell["method"], (math.inf, None)), (result["val_loss"], cell["lr"]))
    return {name: best[name][1] for name in cfg.methods if name in best}


# ----------------------------------------------------------------------------------------------------
# statistics

# t quantiles t_{0.975}(df) for a two-sided 95% interval; past 30 degrees of freedom the normal's 1.96
T_975 = [None, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042]


def paired_difference(a, b):
    """Mean of a_i - b_i (paired: the same seed) and the half-width of its 95% interval (Student's t over the
    seeds; None for a single pair)."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return statistics.mean(d), None
    t = T_975[len(d) - 1] if len(d) - 1 < len(T_975) else 1.96
    return statistics.mean(d), t * statistics.stdev(d) / math.sqrt(len(d))


def task_expert_information(load, tokens, top_k):
    """Mutual information between a token's task and an expert it chose, in bits, and as a fraction of its
    largest possible value, for one layer. load[t][e]: the share of task t's (token, slot) pairs that went to
    expert e; tokens[t]: task t's token count. A (token, slot) pair drawn at random gives the joint P(t, e).
    I(T; E) = H(E) - H(E | T) <= min(H(T), log2(E / top_k)): each token spreads its top_k slots over distinct
    experts, so H(E | T) >= log2(top_k)."""
    total = sum(tokens)
    p_t = [n / total for n in tokens]
    joint = [[p * q for q in row] for p, row in zip(p_t, load)]
    p_e = [sum(col) for col in zip(*joint)]
    bits = sum(j * math.log2(j / (p_t[t] * p_e[e])) for t, row in enumerate(joint) for e, j in enumerate(row) if j > 0)
    h_t = -sum(p * math.log2(p) for p in p_t if p > 0)
    most = min(h_t, math.log2(len(p_e) / top_k))
    return bits, (bits / most if most > 0 else 0.0)


def routing_summary(routing, top_k):
    """Per layer: task-expert information (bits and normalised), router entropy (as a fraction of ln E),
    mean pairwise cosine of the experts' outputs; each averaged over the tasks' tokens."""
    E = len(routing["load"][0][0])
    tokens = routing["tokens"]
    per_layer = []
    for j in range(len(routing["layers"])):
        bits, normalised = task_expert_information([task[j] for task in routing["load"]], tokens, top_k)
        weighted = lambda values: sum(v[j] * n for v, n in zip(values, tokens)) / sum(tokens)  # noqa: E731
        per_layer.append({"mi_bits": bits, "mi_normalised": normalised,
                          "entropy": weighted(routing["entropy"]) / math.log(E),
                          "expert_cosine": weighted(routing["expert_cosine"])})
    return per_layer


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------------
# the report

def report(cfg, sweep, table, picked, base_info):
    import evaluate
    from data.llm_adapters import table_name
    from data.prepare import read_meta

    meta = read_meta(cfg.data_dir)
    groups = [(meta["math_tasks"], "math avg"), (meta["commonsense_tasks"], "cs avg")]
    labels = {name: methods(cfg.rank)[name][0] for name in cfg.methods}
    runs = {name: [r for c in table if c["method"] == name and (r := result_of(c))] for name in cfg.methods}
    runs = {name: sorted(rs, key=lambda r: r["cell"]["seed"]) for name, rs in runs.items() if rs}

    def scores(r):  # the table's columns for one run: each task, each group's average, the overall average
        acc = r["accuracy"]
        cols = {}
        for tasks, label in groups:
            cols.update({table_name(t).removeprefix("syn_"): acc[t] for t in tasks})
            cols[label] = statistics.mean(acc[t] for t in tasks)
        cols["avg"] = statistics.mean(acc[t] for tasks, _ in groups for t in tasks)
        return {k: 100 * v for k, v in cols.items()}

    results = {"config": asdict(cfg), "base": base_info, "picked_lr": picked, "methods": {}}
    lines = [f"# LoRA against MoELoRA on the bundled tasks", "",
             f"Base: {base_info.get('summary', '?')}. Fine-tuning: {cfg.finetune_preset}; learning rates picked by "
             f"validation loss on seed {cfg.sweep_seed}; the table's seeds 1-{cfg.seeds}; accuracy in %, mean ± std "
             f"over seeds; {cfg.eval_items or 'all'} test items per task.", ""]
    if runs:
        columns = list(scores(next(iter(runs.values()))[0]))
        lines += ["| method | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
        for name, rs in runs.items():
            per_run = [scores(r) for r in rs]
            cells = {c: mean_std([s[c] for s in per_run]) for c in columns}
            results["methods"][name] = {"label": labels[name], "seeds": [r["cell"]["seed"] for r in rs],
                                        "lr": rs[0]["cell"]["lr"], "scores": per_run,
                                        "mean": {c: m for c, (m, _) in cells.items()},
                                        "std": {c: s for c, (_, s) in cells.items()}}
            lines.append(f"| {labels[name].strip()} | {len(rs)} | " +
                         " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in cells.values()) + " |")
        lines += _differences(runs, labels, scores, results)
        lines += _costs(runs, labels, results)
        lines += _routing(cfg, runs, labels, results)
    lines += _sweep(cfg, sweep, labels, picked)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    drawn = plot_routing(results, os.path.join(cfg.out_dir, "routing.png"))
    for name, routing in results.get("routing_seed1", {}).items():  # every layer's load, as evaluate.py draws it
        evaluate.plot_routing(routing, os.path.join(cfg.out_dir, f"routing_{name}_seed1.png"))
    print("\n".join(lines))
    print(f"\nwrote {cfg.out_dir}/results.md, results.json" + (", routing*.png" if drawn else ""))
    return results


def _differences(runs, labels, scores, results):
    """Each method minus LoRA r (paired by seed), with the 95% interval."""
    if "lora" not in runs:
        return []
    lines = ["", "Each method minus LoRA, paired by seed (points; 95% interval over seeds, Student's t):", "",
             "| method | math avg | cs avg | avg |", "|---|---|---|---|"]
    lora = {r["cell"]["seed"]: scores(r) for r in runs["lora"]}
    for name, rs in runs.items():
        if name == "lora":
            continue
        mine = {r["cell"]["seed"]: scores(r) for r in rs}
        seeds = sorted(set(mine) & set(lora))
        cells, diffs = [], {}
        for col in ("math avg", "cs avg", "avg"):
            d, half = paired_difference([mine[s][col] for s in seeds], [lora[s][col] for s in seeds])
            diffs[col] = {"mean": d, "ci95": half, "seeds": seeds}
            cells.append(f"{d:+.1f}" + (f" ± {half:.1f}" if half is not None else ""))
        results["methods"][name]["minus_lora"] = diffs
        lines.append(f"| {labels[name].strip()} | " + " | ".join(cells) + " |")
    return lines


def _costs(runs, labels, results):
    lines = ["", "Training cost (median over seeds; tokens/s are example tokens, each run beside others on the "
                 "device):", "", "| method | trainable params | lr | tokens/s | train s | eval s | peak GB |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        p = rs[0]["params"]
        med = lambda key: statistics.median(r[key] for r in rs) if rs[0].get(key) is not None else None  # noqa: E731
        cost = {"params": p, "tokens_per_s": med("tokens_per_s"), "train_s": med("train_s"), "eval_s": med("eval_s"),
                "peak_memory_gb": med("peak_memory_gb")}
        results["methods"][name]["cost"] = cost
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        params = f"{p['adapter']:,} + {p['router']:,} router" if p["router"] else f"{p['trainable']:,}"
        lines.append(f"| {labels[name].strip()} | {params} | {rs[0]['cell']['lr']:g} | "
                     f"{fmt(cost['tokens_per_s'], ',.0f')} | {fmt(cost['train_s'], '.0f')} | "
                     f"{fmt(cost['eval_s'], '.0f')} | {fmt(cost['peak_memory_gb'], '.2f')} |")
    return lines


def _routing(cfg, runs, labels, results):
    """Per MoELoRA method: the layers' task-expert information, router entropy and expert-output cosine."""
    moe = {name: rs for name, rs in runs.items() if rs[0].get("routing")}
    if not moe:
        return []
    lines = ["", "Routing on the test prompts (mean over layers and seeds; MI: mutual information between a token's "
                 "task and its chosen experts, bits and as a share of its maximum min(H(task), log2(E/k)); entropy: "
                 "router entropy / ln E; cosine: mean over expert pairs of the cosine between their outputs):", "",
             "| method | MI bits | MI normalised | most specialised layer (MI normalised) | entropy | expert cosine |",
             "|---|---|---|---|---|---|"]
    for name, rs in moe.items():
        per_run = [routing_summary(r["routing"], top_k=2) for r in rs]
        layers = rs[0]["routing"]["layers"]
        per_layer = {k: [statistics.mean(run[j][k] for run in per_run) for j in range(len(layers))]
                     for k in per_run[0][0]}
        results["methods"][name]["routing"] = {"layers": layers, "per_layer": per_layer}
        results.setdefault("routing_seed1", {})[name] = rs[0]["routing"]  # the figure's heatmaps
        best = max(range(len(layers)), key=lambda j: per_layer["mi_normalised"][j])
        m = {k: statistics.mean(v) for k, v in per_layer.items()}
        lines.append(f"| {labels[name].strip()} | {m['mi_bits']:.3f} | {m['mi_normalised']:.3f} | "
                     f"{layers[best].replace('transformer.', '')} ({per_layer['mi_normalised'][best]:.3f}) | "
                     f"{m['entropy']:.3f} | {m['expert_cosine']:.3f} |")
    return lines


def _sweep(cfg, cells, labels, picked):
    lines = ["", f"The sweep (validation loss after fine-tuning, seed {cfg.sweep_seed}; * picked):", "",
             "| method | " + " | ".join(f"rate {i + 1}" for i in range(len(cfg.adapter_lrs))) + " |",
             "|---|" + "---|" * len(cfg.adapter_lrs)]
    for name in cfg.methods:
        row = [c for c in cells if c["method"] == name]
        text = [f"{r['val_loss']:.4f}{'*' if c['lr'] == picked.get(name) else ''} (lr {c['lr']:g})"
                if (r := result_of(c)) else f"- (lr {c['lr']:g})" for c in row]
        lines.append(f"| {labels[name].strip()} | " + " | ".join(text) + " |")
    return lines


def plot_routing(results, path):
    """One figure: expert load per task at the most specialised layer, with and without the contrastive loss
    (seed 1), and the task-expert information per layer of every MoELoRA method. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    moe = {n: m for n, m in results["methods"].items() if "routing" in m}
    if not moe:
        return False
    shown = [n for n in ("moelora", "no_contrastive") if n in moe] or list(moe)[:1]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4.2 * (len(shown) + 1), 4.2), layout="constrained")
    for ax, name in zip(axes, shown):
        routing = results["routing_seed1"][name]
        j = max(range(len(routing["layers"])), key=lambda k: moe[name]["routing"]["per_layer"]["mi_normalised"][k])
        load = [task[j] for task in routing["load"]]
        im = ax.imshow(load, vmin=0, vmax=0.5, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(routing["tasks"])), [t.removeprefix("syn_") for t in routing["tasks"]], fontsize=7)
        ax.set_xticks(range(len(load[0])))
        ax.set_xlabel("expert")
        ax.set_title(f"{moe[name]['label'].strip()}\n{routing['layers'][j].replace('transformer.', '')}", fontsize=8)
    fig.colorbar(im, ax=axes[:len(shown)], fraction=0.03, label="share of the task's routed slots")
    ax = axes[-1]
    for name, m in moe.items():
        ax.plot(m["routing"]["per_layer"]["mi_normalised"], marker="o", markersize=3, label=m["label"].strip())
    ax.set_xlabel("adapted layer (block by block)")
    ax.set_ylabel("I(task; expert) / its maximum")
    top = max(v for m in moe.values() for v in m["routing"]["per_layer"]["mi_normalised"])
    ax.set_ylim(0, max(0.1, 1.25 * top))  # 1 would be each task on its own experts
    ax.legend(fontsize=6)
    ax.set_title("task-expert information, mean over seeds", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    cfg = cli.parse(ExperimentConfig, argv)
    if cfg.cell:
        return run_cell(cfg.cell)
    from data.prepare import ensure, read_meta
    if not os.path.exists(os.path.join(cfg.data_dir, "meta.json")):
        ensure(cfg.data_dir)  # the bundled suite, built once
    read_meta(cfg.data_dir)
    if cfg.reproduce:
        return reproduce(cfg, cfg.reproduce)
    grid = Grid(cfg)
    finished = True
    if not cfg.report_only:
        if not cfg.base:
            pretrain_base(cfg)
        finished = grid.run(sweep_cells(cfg), "sweep")
    picked = pick_rates(cfg, sweep_cells(cfg))  # a method whose sweep failed has no table runs
    table = table_cells(cfg, picked)
    if finished and not cfg.report_only:
        finished = grid.run(table, "table")
    base_info = describe_base(base_ckpt(cfg), probe_base(cfg))
    results = report(cfg, sweep_cells(cfg), table, picked, base_info)
    grid.check()
    print(f"[{grid.clock()}] " + ("the grid is complete" if finished else "stopped at the deadline: run it again to "
                                  "go on"))
    return results


def reproduce(cfg, method):
    """Run method's seed-1 table run again, alone, in work_dir/repro; its figures beside the grid's, in
    out_dir/reproduce.md (the same numbers, to the GPU's nondeterminism; tokens/s alone against beside others)."""
    picked = pick_rates(cfg, sweep_cells(cfg))
    if method not in picked:
        raise ValueError(f"{method} has no finished sweep: run the grid first")
    cell = next(c for c in table_cells(cfg, picked) if c["method"] == method and c["seed"] == 1)
    first = result_of(cell)
    if first is None:
        raise ValueError(f"{method}'s seed-1 table run has not finished: run the grid first")
    again = dict(cell, phase="repro", dir=os.path.join(cfg.work_dir, "repro", os.path.relpath(cell["dir"], cfg.work_dir)))
    again["train_argv"] = [a if not a.startswith("--out_dir=") else f"--out_dir={os.path.join(again['dir'], 'train')}"
                           for a in cell["train_argv"]]
    shutil.rmtree(again["dir"], ignore_errors=True)
    grid = Grid(dataclasses.replace(cfg, parallel=1, deadline_s=0))
    grid.run([again], "reproduce")
    grid.check()
    second = result_of(again)
    rows = [("validation loss", "val_loss", "{:.4f}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
            ("train s", "train_s", "{:.0f}")]
    lines = [f"# {method}, seed 1 (lr {cell['lr']:g}), run again alone", "",
             "| | in the grid | alone, again |", "|---|---|---|"]
    lines += [f"| {label} | {fmt.format(first[key])} | {fmt.format(second[key])} |" for label, key, fmt in rows]
    lines += [f"| {task.removeprefix('syn_')} | {100 * first['accuracy'][task]:.1f} | "
              f"{100 * second['accuracy'][task]:.1f} |" for task in first["accuracy"]]
    both = [statistics.mean(r["accuracy"].values()) for r in (first, second)]
    lines.append(f"| avg | {100 * both[0]:.1f} | {100 * both[1]:.1f} |")
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "reproduce.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return first, second


def describe_base(path, probe):
    """The base's shape, final validation loss (from the log beside it) and lookup probe, in one line too."""
    import checkpoint
    import moelora
    model, saved = checkpoint.load_checkpoint(path)
    shape = {k: saved["model_args"][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    n_params = moelora.count_parameters(model)["base"]
    val = None
    log = os.path.join(os.path.dirname(path), "log.jsonl")
    if os.path.exists(log):
        with open(log) as f:
            val = [r["val_loss"] for r in map(json.loads, f) if "val_loss" in r][-1]
    summary = (f"{shape['n_layer']} layers x {shape['n_embd']}, {n_params / 1e6:.2f}M parameters, pretrained for "
               f"{saved['iter_num']} steps, validation loss {val:.4f}, lookup probe {100 * probe['lookup']:.0f}%")
    return {"path": path, **shape, "params": n_params, "steps": saved["iter_num"], "val_loss": val, **probe,
            "summary": summary}


if __name__ == "__main__":
    cli.run(main)
