"""
Evaluate fine-tuned checkpoints on the tasks' test splits: batched greedy decoding, LLM-Adapters' scoring,
and a per-task accuracy table in the paper's layout (math tasks and their average, commonsense tasks and
their average). For MoELoRA checkpoints it also measures routing per task and layer (expert load, router
entropy), saved as JSON and, when matplotlib is installed, drawn as heatmaps.

    python evaluate.py --ckpt=out/demo/moelora/ckpt.pt
    python evaluate.py --ckpt=out/demo/lora/ckpt.pt,out/demo/moelora/ckpt.pt --out=out/demo   # side by side
    python evaluate.py --ckpt=... --max_items=50                                                 # quicker
    python evaluate.py --ckpt=out/gpt2-math/ckpt.pt --batch_size=32     # on data from data.prepare_llm_adapters

Decoding stops at eot or after max_new_tokens: by default LLM-Adapters' lengths where the data directory gives
them (meta["max_new_tokens"]: 256 for math, enough for GSM8K's rationales, 32 for commonsense), else the longest
training output of the task plus 8; never past the model's context (a prompt that fills it scores wrong, counted).

Writes eval.json and eval.md (and routing.json, routing.png) to --out, by default the first checkpoint's
directory.
"""

import json
import os
import time
from dataclasses import dataclass

import torch

import checkpoint
import cli
import moelora
from data.llm_adapters import is_correct, load_json, prompt, table_name
from data.prepare import read_meta
from data.tokenizer import load_tokenizer


@dataclass
class EvalConfig:
    ckpt: tuple = ()  # one or more checkpoints (comma-separated)
    data_dir: str = ""  # default: the data directory the first checkpoint was trained on
    base: str = ""  # override the base model an adapter checkpoint names (if it moved)
    max_items: int = 0  # test items per task (0: all)
    batch_size: int = 64
    max_new_tokens: int = 0  # the most tokens decoded per answer (0: the data's rule, see above)
    out: str = ""  # where the results go (default: the first checkpoint's directory)
    routing: bool = True  # routing statistics and heatmaps for MoELoRA checkpoints
    device: str = "auto"

    def __post_init__(self):
        cli.check(self, {"ckpt": ((lambda v: len(v) > 0), "one or more checkpoints: --ckpt=path/to/ckpt.pt"),
                         "max_items": cli.at_least(0), "batch_size": cli.at_least(1),
                         "device": cli.matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")})


# ----------------------------------------------------------------------------------------------------
# accuracy

def task_items(data_dir, task, max_items):
    items = load_json(os.path.join(data_dir, "tasks", task, "test.json"))
    return items[:max_items] if max_items else items


def answer_length(enc, data_dir, task, meta=None):
    """Decode at most this many tokens: the data directory's length for the task where it gives one (LLM-Adapters'
    generation lengths), else the longest training output of the task, plus room."""
    if meta is not None and task in meta.get("max_new_tokens", {}):
        return meta["max_new_tokens"][task]
    outputs = [item["output"] for item in load_json(os.path.join(data_dir, "tasks", task, "train.json"))]
    return max(len(enc.encode(o)) for o in outputs) + 8


@torch.no_grad()
def greedy_answers(model, enc, items, max_new, eot, batch_size=64):
    """The model's greedy answer (text) to each item's prompt, in the items' order; at most max_new tokens,
    fewer where a batch's longest prompt leaves less room in the context. A prompt that fills the context has
    no room for an answer: None."""
    prompts = [enc.encode(prompt(it["instruction"], it["input"])) for it in items]
    block = model.config.block_size
    # similar lengths batched together waste less on padding (and leave the short prompts their full room)
    order = sorted((i for i in range(len(prompts)) if len(prompts[i]) < block), key=lambda i: len(prompts[i]))
    answers = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        room = min(max_new, block - max(len(prompts[i]) for i in chunk))
        outs = model.generate_batch([prompts[i] for i in chunk], room, stop_token=eot, pad_token=eot)
        for i, out in zip(chunk, outs):
            # the embedding table is padded past the tokenizer's vocabulary; an (untrained) model may
            # still pick a padding id, which decodes to nothing
            answers[i] = enc.decode([t for t in out if t < enc.n_vocab])
    return answers


@torch.no_grad()
def evaluate_tasks(model, data_dir, max_items=0, device="cpu", batch_size=64, log=None, max_new_tokens=0):
    """Greedy answers to every test item of every task, scored as LLM-Adapters scores them; at most
    max_new_tokens per answer (0: the data's rule, answer_length).

    Returns {"accuracy": {task: fraction}, "n": {task: items}, "examples": {task: first answer},
    "too_long": {task: prompts that fill the context, scored wrong}}.
    """
    meta = read_meta(data_dir)
    enc = load_tokenizer(data_dir)
    eot = meta["eot_token"]
    was_training = model.training
    model.eval()
    results = {"accuracy": {}, "n": {}, "examples": {}, "too_long": {}}
    for task in meta["tasks"]:
        t0 = time.time()
        items = task_items(data_dir, task, max_items)
        max_new = max_new_tokens or answer_length(enc, data_dir, task, meta)
        answers = greedy_answers(model, enc, items, max_new, eot, batch_size)
        results["too_long"][task] = sum(a is None for a in answers)
        answers = ["" if a is None else a for a in answers]
        correct = [is_correct(task, a, it["answer"]) for a, it in zip(answers, items)]
        results["accuracy"][task] = sum(correct) / len(correct)
        results["n"][task] = len(correct)
        results["examples"][task] = {"prompt": items[0]["instruction"], "output": answers[0],
                                     "answer": items[0]["answer"], "correct": correct[0]}
        if log:
            too_long = results["too_long"][task]
            log(f"  {task:16s} {results['accuracy'][task]:6.1%} of {len(correct)} ({time.time() - t0:.1f}s)" +
                (f"; {too_long} prompts fill the context ({model.config.block_size} tokens): scored wrong"
                 if too_long else ""))
    model.train(was_training)
    return results


def format_table(rows, meta):
    """Markdown: one row per checkpoint; the math tasks and their average, the commonsense tasks and their
    average (a group without tasks has no columns), the average over all tasks. Columns go by the paper's
    names (GSM8K for gsm8k)."""
    groups = [(tasks, label) for tasks, label in ((meta["math_tasks"], "math avg"),
                                                  (meta["commonsense_tasks"], "cs avg")) if tasks]
    every = [t for tasks, _ in groups for t in tasks]
    header = ["model"] + [c for tasks, label in groups for c in [*map(table_name, tasks), label]] + ["avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, acc in rows.items():
        cells = [c for tasks, _ in groups
                 for c in [*(acc[t] for t in tasks), sum(acc[t] for t in tasks) / len(tasks)]]
        cells.append(sum(acc[t] for t in every) / len(every))
        lines.append("| " + " | ".join([name] + [f"{100 * c:.1f}" for c in cells]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# routing: which experts each task uses, layer by layer

@torch.no_grad()
def routing_by_task(model, data_dir, max_items=0, device="cpu", batch_size=64):
    """Expert load, router entropy and how alike the experts' outputs are, per task and MoELoRA layer, over
    the tokens of the test prompts.

    Returns {"tasks": [...], "layers": [...], "tokens": [task] (tokens routed),
    "load": [task][layer][expert] (fractions summing to 1), "entropy": [task][layer] (nats, mean over tokens;
    ln E is uniform), "expert_cosine": [task][layer] (the cosine between two experts' outputs B_e A_e x, mean
    over expert pairs and tokens: what the contrastive loss pushes apart)}, or None without MoELoRA layers.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, moelora.MoELoRALinear)}
    if not layers:
        return None
    meta = read_meta(data_dir)
    enc = load_tokenizer(data_dir)
    # each layer keeps its last routing (layer._step); its input is caught on the way in
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: inputs.__setitem__(name, inp[0]))
             for name, m in layers.items()]
    was_training = model.training
    model.eval()
    result = {"tasks": meta["tasks"], "layers": list(layers), "tokens": [], "load": [], "entropy": [],
              "expert_cosine": []}
    try:
        for task in meta["tasks"]:
            items = task_items(data_dir, task, max_items)
            # a prompt longer than the context is routed as far as the context goes
            prompts = [enc.encode(prompt(it["instruction"], it["input"]))[:model.config.block_size] for it in items]
            counts = {name: torch.zeros(m.n_experts) for name, m in layers.items()}
            entropy = {name: 0.0 for name in layers}
            cosine = {name: 0.0 for name in layers}
            n_tokens = 0
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                T = max(map(len, chunk))
                idx = torch.zeros(len(chunk), T, dtype=torch.long)
                real = torch.zeros(len(chunk), T, dtype=torch.bool)
                for row, p in enumerate(chunk):  # right padding: padded tokens come after the real ones
                    idx[row, :len(p)], real[row, :len(p)] = torch.tensor(p), True
                model(idx.to(device))
                keep = real.view(-1).to(device)  # routing of padding tokens is not counted
                for name, layer in layers.items():
                    routing = layer._step[0]
                    counts[name] += routing.chosen[keep].float().sum(0).cpu()
                    p = routing.probs[keep]
                    entropy[name] += float(-(p * p.clamp(min=1e-9).log()).sum())
                    x = inputs[name].reshape(-1, inputs[name].shape[-1])[keep]
                    cosine[name] += float(expert_output_cosines(layer, x).sum())
                n_tokens += int(keep.sum())
            result["tokens"].append(n_tokens)
            result["load"].append([(counts[n] / counts[n].sum()).tolist() for n in layers])
            result["entropy"].append([entropy[n] / n_tokens for n in layers])
            result["expert_cosine"].append([cosine[n] / n_tokens for n in layers])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return result


def expert_output_cosines(layer, x):
    """Per token of x (N, d_in): the cosine between two experts' outputs o_e = B_e A_e x, mean over the E(E-1)/2
    pairs of a MoELoRALinear's experts, all of them (not only those chosen) -> (N,). In rank space, with the
    contrastive loss's own helpers: h = A_e x and G = B_cat^T B_cat give <o_e, o_f> = h_e^T G_ef h_f."""
    N, E, r = x.shape[0], layer.n_experts, layer.r
    h, G = moelora._rank_space([x], [layer.lora_A], [layer.lora_B], torch.arange(N, device=x.device)[None])
    u = h.new_zeros(1, N, E, E, r)  # expert e's slot: its h in its own r columns of E*r, zeros elsewhere
    u[:, :, range(E), range(E)] = h
    cos = moelora._cosines(u.view(1, N, E, E * r), G)[0]  # (N, E, E)
    pairs = torch.triu_indices(E, E, offset=1)
    return cos[:, pairs[0], pairs[1]].mean(1)


MAX_LOAD_PANELS = 24


def plot_routing(routing, path):
    """Heatmaps of expert load (tasks x experts, one panel per layer) and of router entropy (tasks x layers).
    Returns False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks, layers = routing["tasks"], routing["layers"]
    load = torch.tensor(routing["load"])  # (tasks, layers, E)
    if len(layers) > MAX_LOAD_PANELS:  # GPT-2 xl has 192 adapted layers: a readable figure shows a spread of them
        shown = torch.linspace(0, len(layers) - 1, MAX_LOAD_PANELS).round().long()
        layers, load = [layers[i] for i in shown], load[:, shown]
    n_panels = len(layers) + 1
    cols = min(4, n_panels)
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.32 * len(tasks) * rows + 1.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    for j, name in enumerate(layers):
        ax = axes.flat[j]
        im = ax.imshow(load[:, j].numpy(), vmin=0, vmax=float(load.max()), cmap="viridis", aspect="auto")
        ax.set_title(name.replace("transformer.", ""), fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks if j % cols == 0 else [], fontsize=7)
        ax.set_xticks(range(load.shape[2]))
        ax.tick_params(axis="x", labelsize=7)
    fig.colorbar(im, ax=axes.flat[:len(layers)], fraction=0.02, label="share of routed tokens (x: expert)")
    ax = axes.flat[len(layers)]
    ent = ax.imshow(torch.tensor(routing["entropy"]).numpy(), cmap="magma", aspect="auto")  # every layer
    ax.set_title("router entropy (nats)", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    n_layers = len(routing["layers"])
    ax.set_xticks(range(0, n_layers, max(1, n_layers // 8)))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("adapted layer (model order)" + (f"; load shown for {len(layers)} of {n_layers}"
                                                   if n_layers > len(layers) else ""), fontsize=7)
    fig.colorbar(ent, ax=ax, fraction=0.05)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------

def checkpoint_names(paths):
    """Each checkpoint's name in the table: its directory's name, which must tell them apart."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(path))) for path in paths]
    same = [p for p, n in zip(paths, names) if names.count(n) > 1]
    if same:
        raise cli.ConfigError(f"checkpoints {', '.join(same)} would share a row name (their directory's name); "
                              f"give each its own directory")
    return names


def main(argv=None):
    cfg = cli.parse(EvalConfig, argv)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise cli.ConfigError(f"device={device}, but CUDA is not available here: use device=cpu or device=auto")
    names = checkpoint_names(cfg.ckpt)
    out = cfg.out or os.path.dirname(cfg.ckpt[0])
    os.makedirs(out, exist_ok=True)
    rows, report = {}, {}
    for path, name in zip(cfg.ckpt, names):
        # its data (or --data_dir) must share its tokenizer; paths in it are resolved where it now is
        model, ckpt = checkpoint.load_checkpoint(path, base=cfg.base or None, data_dir=cfg.data_dir or None)
        model.to(device)
        data_dir = cfg.data_dir or ckpt["data"]["data_dir"]
        if not cfg.data_dir and not os.path.isfile(os.path.join(data_dir, "meta.json")):
            raise FileNotFoundError(f"{path} was trained on the data in {data_dir}, which is not there: if it "
                                    f"moved, pass --data_dir=its new path")
        kind = ckpt["adapter"]["kind"] if ckpt["adapter"] else "full"
        print(f"{name} ({kind}, step {ckpt['iter_num']}) on {data_dir}:", flush=True)
        t0 = time.time()
        results = evaluate_tasks(model, data_dir, cfg.max_items, device, cfg.batch_size, log=print,
                                 max_new_tokens=cfg.max_new_tokens)
        print(f"  evaluated in {time.time() - t0:.0f}s", flush=True)
        rows[name] = results["accuracy"]
        report[name] = dict(results, checkpoint=os.path.abspath(path), kind=kind,
                            params=moelora.count_parameters(model))
        if cfg.routing:
            routing = routing_by_task(model, data_dir, cfg.max_items, device, cfg.batch_size)
            if routing is not None:
                report[name]["routing"] = routing
                stem = os.path.join(out, f"routing_{name}" if len(cfg.ckpt) > 1 else "routing")
                with open(stem + ".json", "w") as f:
                    json.dump(routing, f, indent=1)
                drawn = plot_routing(routing, stem + ".png")
                print(f"  routing -> {stem}.json" + (f", {stem}.png" if drawn else
                                                     " (pip install matplotlib for heatmaps)"))
    table = format_table(rows, read_meta(data_dir))
    print("\n" + table)
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "eval.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nwrote {os.path.join(out, 'eval.json')} and eval.md")
    return report


if __name__ == "__main__":
    cli.run(main)  # an expected error is one line "error: ..." and exit code 1
