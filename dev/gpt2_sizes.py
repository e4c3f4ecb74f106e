"""What fine-tuning each GPT-2 size costs on one GPU: peak memory, step time, tokens/s, and the time an epoch of
LLM-Adapters' math_10k and commonsense_170k takes, for LoRA r16 and MoELoRA 8 x r2 (equal parameters, top-2).

    python -m dev.gpt2_sizes                         # the README's table: 4 sizes x 2 adapters (one H200: ~3 min)
    python -m dev.gpt2_sizes --quick=1               # plumbing only: a 1-layer model, few steps (CPU is fine)
    python -m dev.gpt2_sizes --sizes=gpt2-xl --batch_size=32 --json=out/gpt2_sizes.json

What is timed is train.py's own step: train.train_step on train.Data batches (whole examples right-padded to
the batch's longest), gradient clipping, the fused AdamW; bf16 autocast on CUDA; adapters on attn.c_attn,
attn.c_proj, mlp.c_fc and mlp.c_proj; weights random, of each size's real shape (speed and memory do not depend
on their values). Each step is synchronised. Each timed batch is stepped twice: the first time may pay a
one-off cost for a padded length the process has not run before (per-shape work cached per process: cuDNN's
attention plans took ~0.1-0.2 s each on the H200 until train.setup_run turned them off; tens of ms remain), the
second is the steady state. The table gives
the median steady step of --steps timed batches after --warmup, and the median one-off cost of a new length.
Peak memory is torch.cuda.max_memory_allocated over a case, weights included, and the case starts with one
batch of cutoff_len-token examples, the worst a prepared data directory holds.

The lengths (prompt + output + eot, GPT-2 tokens, cut at cutoff_len = 256 as data.prepare_llm_adapters does)
are drawn from LENGTHS, histograms estimated from LLM-Adapters' test sets of the same kind as the training
files (the training files themselves are not in this repository): GPT-2 pre-tokenizer pieces x 1.15 of
    math_10k-like         gsm8k 60%, MAWPS-like (AddSub, SingleEq, MultiArith) 30%, AQuA 10%, test items with
                          their rationales: median 160, 90th percentile 233; 4.7% longer than 256, cut
    commonsense_170k-like boolq, piqa, social_i_qa, winogrande, ARC-e, ARC-c, openbookqa weighted as
                          commonsense_170k mixes them, with the 6-token answer; hellaswag's share (23%, its test
                          set is not in the repository we read) put at 160-224 tokens: median ~115
An epoch is ceil(items / batch_size) steps of the median steady step, plus the one-off cost once for each padded
length an epoch's batches have (sampled from LENGTHS): math_10k 10,000 items, commonsense_170k 170,000 (their
nominal sizes; train.py samples batches with replacement, so an "epoch" is a number of steps).

Evaluation as evaluate.py runs it (float32 weights, greedy, batches of 64 prompts, KV cache): one batch of
64 prompts of 128 tokens decodes 64 tokens, once untimed, then the median of DECODE_REPEATS timed runs; the test sets' time is that step time times their decoding
steps: ceil(items / 64) batches of 256 steps for the six math sets, of 32 for the five commonsense ones
(LLM-Adapters' lengths), with their sizes in EVAL_ITEMS. An upper bound: a trained model stops at eot.
"""

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

import cli
import moelora
import train
from model import GPT, GPTConfig

SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
         "gpt2-xl": (48, 25, 1600)}  # n_layer, n_head, n_embd (their config.json files)
QUICK_SIZE = {"tiny": (1, 2, 32)}
VOCAB, QUICK_VOCAB = 50257, 512
CUTOFF = 256
# (low, high, share): an example's length is uniform in [low, high) with that probability; [256, 257) is cut
LENGTHS = {
    "math_10k": [(64, 96, 0.020), (96, 128, 0.156), (128, 160, 0.319), (160, 192, 0.229), (192, 224, 0.147),
                 (224, 256, 0.082), (256, 257, 0.047)],
    "commonsense_170k": [(64, 96, 0.084), (96, 128, 0.591), (128, 160, 0.069), (160, 192, 0.129),
                         (192, 224, 0.119), (224, 256, 0.004), (256, 257, 0.004)],
}
EPOCH_ITEMS = {"math_10k": 10_000, "commonsense_170k": 170_000}
# LLM-Adapters' test sets (dataset/<Task>/test.json): items, and the tokens evaluate.py decodes at most
EVAL_ITEMS = {"math": ({"MultiArith": 600, "gsm8k": 1319, "AddSub": 395, "AQuA": 254, "SingleEq": 508,
                        "SVAMP": 1000}, 256),
              "commonsense": ({"boolq": 3270, "piqa": 1838, "ARC-Easy": 2376, "ARC-Challenge": 1172,
                               "openbookqa": 500}, 32)}
EVAL_BATCH, EVAL_PROMPT, EVAL_STEPS = 64, 128, 64  # the timed decoding (--quick: 4, 16, 4)
DECODE_REPEATS = 3  # timed decodings after one untimed (--quick: one, timed)
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclass
class SizesConfig:
    sizes: tuple = tuple(SIZES)
    adapters: tuple = ("lora", "moelora")
    batch_size: int = 16  # LLM-Adapters' --batch_size in their README's commands
    warmup: int = 2
    steps: int = 6
    quick: bool = False  # a 1-layer model, a 512-token vocabulary, batch 2, one timed step, no warm-up
    device: str = "auto"
    json: str = ""  # also write the rows here


def adapter_config(kind):
    lora = moelora.AdapterConfig(kind="lora", r=16, alpha=32.0, targets=TARGETS)
    return lora if kind == "lora" else moelora.equal_params_moelora(lora, n_experts=8, top_k=2)


def write_lengths(directory, name, n_examples, seed, vocab_size):
    """Token files as data.prepare_llm_adapters writes them (random ids, all counted in the loss, as with
    train_on_inputs=1), whose example lengths follow LENGTHS[name]."""
    rng = np.random.default_rng(seed)
    bins = LENGTHS[name]
    which = rng.choice(len(bins), size=n_examples, p=[share for _, _, share in bins])
    sizes = np.array([rng.integers(bins[b][0], bins[b][1]) for b in which])
    os.makedirs(directory, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        tokens = rng.integers(0, vocab_size, sizes.sum(), dtype=np.uint16)
        counts[f"finetune_{split}"] = len(tokens)
        tokens.tofile(os.path.join(directory, f"finetune_{split}.bin"))
        np.ones(sizes.sum(), dtype=np.uint8).tofile(os.path.join(directory, f"finetune_{split}_mask.bin"))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        offsets.tofile(os.path.join(directory, f"finetune_{split}_idx.bin"))
    with open(os.path.join(directory, "meta.json"), "w") as f:
        # the fields train.Data checks; nothing here is tokenized, so there is no tokenizer or task to name
        json.dump({"vocab_size": vocab_size, "eot_token": vocab_size - 1, "tokenizer": None, "tasks": [],
                   "tokens": counts, "files": {}, "train_on_inputs": True, "lengths": name}, f)
    return directory


class FullLength:
    """Batches of CUTOFF-token examples (train.Data.batch's shapes): the worst case for memory."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def batch(self, split, step, micro, batch_size, pad_to=None):
        idx = torch.randint(0, self.vocab_size, (batch_size, CUTOFF))
        return idx[:, :-1], idx[:, 1:], torch.ones(batch_size, CUTOFF - 1), batch_size * (CUTOFF - 1)


def measure(size, shape, kind, data_dirs, cfg, device, vocab_size):
    """One row: this size with this adapter, every length distribution."""
    n_layer, n_head, n_embd = shape
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains: an xl is 6 GB of fp32 weights
        gpt = GPT(GPTConfig(block_size=1024, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    adapter = adapter_config(kind)
    moelora.inject(gpt, adapter)
    moelora.mark_only_adapters_trainable(gpt)
    # the settings train_step reads; init_from names the shape only (the random model above is what trains)
    tcfg = train.TrainConfig(mode="finetune", init_from="gpt2", batch_size=cfg.batch_size, device=device,
                             adapter=adapter, train_on_inputs=True)
    run = train.setup_run(tcfg)
    optimizer = gpt.configure_optimizers(0.0, 3e-4, (0.9, 0.99), run.device_type)
    cuda = run.device_type == "cuda"
    step_loss = train.TrainingLoss(gpt, adapter, run.autocast)

    def step(data, i):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batches, tokens = train.step_batches(data, i, tcfg, run)
        train.eager_step(step_loss, gpt, optimizer, batches, 3e-4, tcfg, run)  # with clipping and the update
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, tokens, batches[0][0].shape[1]

    def timed_step(data, i):
        """A batch stepped twice: (first time, second time, tokens, padded length, whether the length was new)."""
        first, tokens, T = step(data, i)
        new = T not in seen_lengths
        seen_lengths.add(T)
        return first, step(data, i)[0], tokens, T, new

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # lengths this row has run (the full-length step below runs cutoff_len - 1 first); one that another row ran
    # earlier in the process may already be cached: the cost is per process, not per row
    seen_lengths = {CUTOFF - 1}
    counts = moelora.count_parameters(gpt)
    row = {"size": size, "adapter": kind, "batch": cfg.batch_size, "params": counts["base"],
           "trainable": counts["trainable"], "full_length_step_s": step(FullLength(vocab_size), 0)[0]}
    for name, directory in data_dirs.items():
        data = train.Data(directory, "finetune", seed=1)
        data.block_size = 1024
        for i in range(cfg.warmup):
            seen_lengths.add(step(data, 1 + i)[2])
        timed = [timed_step(data, 100 + i) for i in range(cfg.steps)]
        step_s = statistics.median(again for _, again, _, _, _ in timed)
        extras = [max(first - again, 0.0) for first, again, _, _, new in timed if new]
        new_length_s = statistics.median(extras) if extras else 0.0
        steps = math.ceil(EPOCH_ITEMS[name] / cfg.batch_size)
        lengths = epoch_lengths(name, steps, cfg.batch_size)
        row[name] = {"step_ms": 1e3 * step_s, "tokens_per_s": sum(t[2] for t in timed) / sum(t[1] for t in timed),
                     "new_length_ms": 1e3 * new_length_s, "epoch_lengths": lengths,
                     "epoch_min": (steps * step_s + lengths * new_length_s) / 60,
                     "steps": [{"T": T, "first_ms": 1e3 * first, "again_ms": 1e3 * again, "new_length": new}
                               for first, again, _, T, new in timed]}
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    decode_step_s = time_decoding(gpt, vocab_size, cuda, cfg.quick)
    row["eval_min"] = {group: decode_step_s * steps / 60 for group, steps in eval_steps().items()}
    del gpt, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return row


def epoch_lengths(name, steps, batch_size, seed=0):
    """How many distinct padded lengths (the longest example of a batch, less the shift) an epoch of steps
    batches of LENGTHS[name] examples has: the number of times it pays a new length's one-off cost."""
    rng = np.random.default_rng(seed)
    bins = LENGTHS[name]
    which = rng.choice(len(bins), size=(steps, batch_size), p=[share for _, _, share in bins])
    low, high = np.array([b[0] for b in bins]), np.array([b[1] for b in bins])
    lengths = rng.integers(low[which], high[which])
    return len(np.unique(lengths.max(1) - 1))


def time_decoding(gpt, vocab_size, cuda, quick):
    """Seconds per decoding step of a batch as evaluate.py decodes it (float32, no autocast)."""
    batch, length, steps = (4, 16, 4) if quick else (EVAL_BATCH, EVAL_PROMPT, EVAL_STEPS)
    gpt.eval()
    prompts = torch.randint(0, vocab_size, (batch, length)).tolist()
    times = []
    for _ in range(1 if quick else DECODE_REPEATS + 1):  # the first run (one-off costs) is not counted
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gpt.generate_batch(prompts, steps)  # no stop token: every step runs
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    gpt.train()
    return statistics.median(times[-DECODE_REPEATS:]) / steps


def eval_steps():
    """{group: decoding steps of its test sets}: ceil(items / EVAL_BATCH) batches of max_new steps each."""
    return {group: sum(math.ceil(n / EVAL_BATCH) for n in items.values()) * max_new
            for group, (items, max_new) in EVAL_ITEMS.items()}


def format_rows(rows):
    lines = ["| model | adapter | batch | peak GB | math_10k ms/step | new length ms | tokens/s | epoch (min) | "
             "commonsense_170k ms/step | new length ms | tokens/s | epoch (min) | eval math (min, at most) | "
             "eval commonsense |", "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['adapter']} | {r['batch']} | {r['error']} |" + " |" * 10)
            continue
        m, c = r["math_10k"], r["commonsense_170k"]
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        data = [f"{d['step_ms']:.0f} | {d['new_length_ms']:.0f} | {d['tokens_per_s']:,.0f} | {d['epoch_min']:.1f}"
                for d in (m, c)]
        lines.append(f"| {r['size']} | {r['adapter']} | {r['batch']} | {peak} | {data[0]} | {data[1]} | "
                     f"{r['eval_min']['math']:.1f} | {r['eval_min']['commonsense']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    cfg = cli.parse(SizesConfig, argv)
    unknown = set(cfg.sizes) - set(SIZES)
    if unknown or set(cfg.adapters) - {"lora", "moelora"}:
        raise cli.ConfigError(f"sizes are {', '.join(SIZES)}, adapters lora and moelora; got {cfg.sizes}, "
                              f"{cfg.adapters}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = QUICK_SIZE if cfg.quick else {s: SIZES[s] for s in cfg.sizes}
    if cfg.quick:
        cfg = dataclasses.replace(cfg, batch_size=2, warmup=0, steps=1)
    info = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "batch_size": cfg.batch_size, "steps": cfg.steps}
    print(f"{info['device']}, torch {info['torch']}; batch {cfg.batch_size}, median of {cfg.steps} batches (each "
          f"stepped twice) after {cfg.warmup} warm-up; bf16 autocast on CUDA", flush=True)
    if device.startswith("cuda") and "moelora" in cfg.adapters:
        import kernel
        t0 = time.time()
        try:  # built before anything is timed; without it MoELoRA runs the reference (impl="auto" warns)
            kernel.load_kernel()
            print(f"kernel ready in {time.time() - t0:.0f} s", flush=True)
        except RuntimeError as e:
            print(f"{e}\nMoELoRA rows use the PyTorch reference", flush=True)
    vocab_size = QUICK_VOCAB if cfg.quick else VOCAB
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data_dirs = {name: write_lengths(os.path.join(work, name), name, 2000, seed, vocab_size)
                     for seed, name in enumerate(LENGTHS)}
        for size, shape in sizes.items():
            for kind in cfg.adapters:
                t0 = time.time()
                try:
                    rows.append(measure(size, shape, kind, data_dirs, cfg, device, vocab_size))
                except torch.cuda.OutOfMemoryError:
                    rows.append({"size": size, "adapter": kind, "batch": cfg.batch_size, "error": "out of memory"})
                    torch.cuda.empty_cache()
                print(f"  {size} {kind}: {time.time() - t0:.0f} s", flush=True)
    print("\n" + format_rows(rows))
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
        print(f"\nwrote {cfg.json}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except cli.ConfigError as e:
        raise SystemExit(f"error: {e}")
