"""Build a data directory from LLM-Adapters' own files: the fine-tuning token files from their training JSON
(math_10k.json, commonsense_170k.json), their test sets under their names, and the model's tokenizer, in the
layout of the bundled suite (data/prepare.py), so that train.py and evaluate.py read it unchanged.

    git clone --depth=1 https://github.com/AGI-Edgerunners/LLM-Adapters        # on a machine with internet
    python -m data.prepare_llm_adapters --llm_adapters=LLM-Adapters --tokenizer=path/to/gpt2 \\
        --train=math_10k.json --tasks=MultiArith,gsm8k,AddSub,AQuA,SingleEq,SVAMP --out=out/math10k
    python -m data.prepare_llm_adapters --help                                 # the options and defaults

Options (LLMAdaptersConfig's fields, parsed by cli.py; a bad option or a bad file stops it with one line
"error: ..." naming the file, the item and the field):
    llm_adapters     their checkout (or any directory laid out like it): ft-training_set/*.json, dataset/<Task>/
    train            training files, comma-separated: a name in ft-training_set/ (or in llm_adapters/), or a path
    tasks            test sets by their directory names (any case): MultiArith, gsm8k, AddSub, AQuA, SingleEq,
                     SVAMP, mawps, boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge,
                     openbookqa; default the MoELoRA paper's eleven
    tokenizer        the model's: a Hugging Face GPT-2 directory (vocab.json + merges.txt), a .tiktoken file or a
                     tiktoken encoding name (see data/tokenizer.py); the first two are copied into the directory
    train_on_inputs  1 (default, as LLM-Adapters' finetune.py): the loss counts the prompt's tokens too
    cutoff_len       the longest example in tokens, as finetune.py's --cutoff_len (default 256, theirs)
    val_set_size     training items held out for the validation loss (default 120, as their README's commands)
    too_long         "cut" (default, as LLM-Adapters: keep the first cutoff_len tokens) or "skip" such items
    seed             which items are held out (default 42)
    out              the data directory (default out/llm_adapters)

What LLM-Adapters' finetune.py does, and what we do
    prompt           their Alpaca template (data.llm_adapters.prompt); the model learns prompt + output + eos.
    train_on_inputs  theirs is True by default and their README's commands keep it: the loss counts every token.
                     With 0, it counts the output and its eos only (their labels -100 over the prompt).
    cutoff_len       they truncate prompt + output to cutoff_len tokens and append eos only when there is room.
                     Here the same: an item longer than cutoff_len (with its eos) keeps its first cutoff_len
                     tokens and loses its eos. One left with no token to learn (the prompt alone fills it, with
                     train_on_inputs=0) is skipped, as is every long item with too_long=skip. Both are counted,
                     per file, in the log and in meta.json, never dropped silently.
    val_set_size     they hold out val_set_size random items (datasets' train_test_split, seed 42); here a seeded
                     shuffle of all training items holds out as many (at least 1: train.py's validation loss).
    tokenization     they tokenize prompt + output as one text; here the prompt and the output are encoded
                     apart, as the bundled suite's are (the model continues the encoded prompt at test time, so
                     a token spanning the seam, such as "\\n\\n" after "### Response:\\n", is never learnt).
    test sets        copied as they are, checked: every item has the four fields, every answer is something
                     is_correct can score (a number for math, A-E for AQuA, a label of the task's set).

The data directory: data/prepare.py's layout, with these differences
    meta.json        "source": "llm_adapters"; "tasks" in the tables' order (data.llm_adapters.MATH_ORDER, then
                     COMMONSENSE_ORDER); "sizes": {task: {"test"}}; "finetune_examples": {"train", "val"};
                     "train_files": [{"name", "path", "sha256", "items", "train", "val", "cut", "skipped"}];
                     "cutoff_len"; "max_new_tokens": {task: LLM-Adapters' generation length (256 math, 32
                     commonsense)}, which evaluate.py decodes to; "max_prompt_tokens", "max_output_tokens" over the
                     test items. No corpus, no pretrain_*.bin (the base is a pretrained GPT-2).
    finetune_{train,val}_file.bin   uint8 per example: the index of its training file in "train_files" (in
                     place of _task.bin: math_10k's items carry no task)
    tasks/<task>/test.json          the test items (no train.json: the training items are the JSON files)
    tokenizer/vocab.json, tokenizer/merges.txt   (a Hugging Face tokenizer) or tokenizer.tiktoken (+ .json):
                     the tokenizer's files, so that load_tokenizer(data directory) works after the source moves
"""

import dataclasses
import hashlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import cli
from data.llm_adapters import COMMONSENSE_ORDER, MATH_ORDER, MAX_NEW_TOKENS, PAPER_TASKS, answer_problem, load_json
from data.llm_adapters import prompt
from data.prepare import json_bytes, log, write_if_changed
from data.tokenizer import TOKENIZER_FILE, load_tokenizer


@dataclass
class LLMAdaptersConfig:
    llm_adapters: str = ""
    train: tuple = ("math_10k.json",)
    tasks: tuple = PAPER_TASKS
    tokenizer: str = ""
    train_on_inputs: bool = True
    cutoff_len: int = 256
    val_set_size: int = 120
    too_long: str = "cut"
    seed: int = 42
    out: str = "out/llm_adapters"


# ----------------------------------------------------------------------------------------------------------
# The options

def check_options(config):
    if not config.llm_adapters or not Path(config.llm_adapters).is_dir():
        raise ValueError(f"--llm_adapters={config.llm_adapters!r}: give the directory of LLM-Adapters' files (git "
                         f"clone https://github.com/AGI-Edgerunners/LLM-Adapters), with ft-training_set/ and dataset/")
    if not config.tokenizer:
        raise ValueError("--tokenizer: give the model's tokenizer, e.g. --tokenizer=path/to/gpt2 (the Hugging Face "
                         "directory whose weights train.py's --init_from loads)")
    if not config.train:
        raise ValueError("--train: name at least one training file, e.g. --train=math_10k.json")
    if config.cutoff_len < 2:
        raise ValueError(f"--cutoff_len={config.cutoff_len}: an example needs at least 2 tokens")
    if config.val_set_size < 1:
        raise ValueError(f"--val_set_size={config.val_set_size}: train.py's validation loss needs at least 1 item")
    if config.too_long not in ("cut", "skip"):
        raise ValueError(f"--too_long={config.too_long!r}: cut or skip")


def task_names(names):
    """The test sets asked for, by their directory names, in the tables' order; an unknown name is an error."""
    known = {task.lower(): task for task in MATH_ORDER + COMMONSENSE_ORDER}
    unknown = [name for name in names if name.lower() not in known]
    if unknown or not names:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; LLM-Adapters' test sets "
                         f"are {', '.join(MATH_ORDER + COMMONSENSE_ORDER)} (dataset/<name>/test.json)")
    chosen = {known[name.lower()] for name in names}
    return [task for task in MATH_ORDER + COMMONSENSE_ORDER if task in chosen]


def training_file(root, name):
    """The path of a training file: in root/ft-training_set/, in root/, or as given."""
    for path in (root / "ft-training_set" / name, root / name, Path(name)):
        if path.is_file():
            return path
    raise FileNotFoundError(f"training file {name}: not in {root / 'ft-training_set'}, not in {root}, not a path")


# ----------------------------------------------------------------------------------------------------------
# The tokenizer, copied into the data directory

def tokenizer_files(name):
    """(what meta["tokenizer"] says, {path in the data directory: bytes}) for a tokenizer load_tokenizer takes:
    a Hugging Face directory's vocab.json and merges.txt go to tokenizer/, a .tiktoken file (and the .json
    beside it) becomes tokenizer.tiktoken; a tiktoken encoding name stays a name (tiktoken's cache holds it)."""
    path = Path(name)
    if (path / "meta.json").is_file():  # a data directory: the tokenizer it names
        inner = json.loads((path / "meta.json").read_text())["tokenizer"]
        return tokenizer_files(path / inner if (path / inner).exists() else inner)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return "tokenizer", {f"tokenizer/{f}": (path / f).read_bytes() for f in ("vocab.json", "merges.txt")}
    if (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    if path.is_file() and path.suffix == ".tiktoken":
        files = {TOKENIZER_FILE: path.read_bytes()}
        if path.with_suffix(".json").is_file():
            files["tokenizer.json"] = path.with_suffix(".json").read_bytes()
        return TOKENIZER_FILE, files
    return str(name), {}


def model_context(tokenizer):
    """n_positions of the Hugging Face checkpoint the tokenizer comes with, or None (no config.json beside it)."""
    config = Path(tokenizer) / "config.json"
    return json.loads(config.read_text()).get("n_positions") if config.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# The fine-tuning examples

def split_items(items, val_set_size, seed):
    """(train, val) lists of (file index, item): a seeded shuffle of all items, the last val_set_size held out."""
    if val_set_size >= len(items):
        raise ValueError(f"--val_set_size={val_set_size} leaves no training item of the {len(items)} there are")
    order = list(range(len(items)))
    random.Random(f"llm-adapters-val-{seed}").shuffle(order)
    return [items[i] for i in order[:-val_set_size]], [items[i] for i in order[-val_set_size:]]


def finetune_arrays(enc, examples, config):
    """The token, mask, offset and file arrays of a list of (file index, item), each example at most
    cutoff_len tokens; and {file index: count} of the examples cut and of those skipped."""
    prompts = enc.encode_ordinary_batch([prompt(item["instruction"], item["input"]) for _, item in examples])
    outputs = enc.encode_ordinary_batch([item["output"] for _, item in examples])
    tokens, mask, offsets, files = [], [], [0], []
    cut, skipped = Counter(), Counter()
    for (file, _), prompt_ids, output_ids in zip(examples, prompts, outputs):
        ids = prompt_ids + output_ids + [enc.eot_token]
        counts = [int(config.train_on_inputs)] * len(prompt_ids) + [1] * (len(output_ids) + 1)
        if len(ids) > config.cutoff_len:
            ids, counts = ids[:config.cutoff_len], counts[:config.cutoff_len]
            # the first token is never a target: an example whose targets all have mask 0 teaches nothing
            if config.too_long == "skip" or not any(counts[1:]):
                skipped[file] += 1
                continue
            cut[file] += 1
        tokens += ids
        mask += counts
        offsets.append(len(tokens))
        files.append(file)
    arrays = {"": np.array(tokens, dtype=np.uint16), "_mask": np.array(mask, dtype=np.uint8),
              "_idx": np.array(offsets, dtype=np.int64), "_file": np.array(files, dtype=np.uint8)}
    return arrays, cut, skipped


def test_items(root, task):
    """LLM-Adapters' test set of the task, every item checked for is_correct."""
    path = root / "dataset" / task / "test.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the test set of {task} is dataset/{task}/test.json in "
                                f"LLM-Adapters' repository")
    items = load_json(path)
    for index, item in enumerate(items):
        problem = answer_problem(task, item["answer"])
        if problem:
            raise ValueError(f"{path}: item {index}: {problem}")
    if not items:
        raise ValueError(f"{path}: holds no items")
    return items


def lengths(arrays):
    sizes = np.diff(arrays["_idx"])
    return f"median {int(np.median(sizes))}, 90th percentile {int(np.percentile(sizes, 90))}, max {sizes.max()}"


# ----------------------------------------------------------------------------------------------------------

def prepare(config):
    """Build (or confirm) the data directory; returns meta."""
    start = time.time()
    check_options(config)
    root, out = Path(config.llm_adapters), Path(config.out)
    tasks = task_names(config.tasks)
    log(f"building into {out} from {root}: train {', '.join(config.train)}; test {', '.join(tasks)}", start)

    try:
        enc = load_tokenizer(config.tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--tokenizer: {e}") from None
    if enc.n_vocab > 2 ** 16:
        raise ValueError(f"--tokenizer: {enc.n_vocab} tokens do not fit the uint16 token files")
    context = model_context(config.tokenizer)
    if context is not None and config.cutoff_len > context:
        raise ValueError(f"--cutoff_len={config.cutoff_len} is longer than the model's context ({context} tokens, "
                         f"n_positions in {Path(config.tokenizer) / 'config.json'})")
    tokenizer_name, tokenizer_copy = tokenizer_files(config.tokenizer)  # {path in the directory: bytes}
    log(f"tokenizer: {config.tokenizer}, {enc.n_vocab:,} tokens, eot {enc.eot_token}", start)

    paths = [training_file(root, name) for name in config.train]
    items = [(f, item) for f, path in enumerate(paths) for item in load_json(path, require_answer=False)]
    per_file = Counter(f for f, _ in items)
    log(f"training items: " + ", ".join(f"{path.name} {per_file[f]:,}" for f, path in enumerate(paths)), start)
    splits = dict(zip(("finetune_train", "finetune_val"), split_items(items, config.val_set_size, config.seed)))

    finetune, cut, skipped, n_examples = {}, Counter(), Counter(), {}
    for split, examples in splits.items():
        arrays, split_cut, split_skipped = finetune_arrays(enc, examples, config)
        if len(arrays["_file"]) == 0:
            raise ValueError(f"{split}: every one of its {len(examples)} items is longer than --cutoff_len="
                             f"{config.cutoff_len}")
        finetune.update({split + suffix: array for suffix, array in arrays.items()})
        cut, skipped = cut + split_cut, skipped + split_skipped
        n_examples[split.removeprefix("finetune_")] = len(arrays["_file"])
        log(f"{split}: {len(arrays['_file']):,} examples, {len(arrays['']):,} tokens; tokens per example "
            f"{lengths(arrays)}", start)
    log(f"longer than cutoff_len={config.cutoff_len}: {sum(cut.values()):,} cut to it (their eot dropped, as "
        f"LLM-Adapters' tokenize does), {sum(skipped.values()):,} skipped"
        f"{' (no output token left to learn)' if config.too_long == 'cut' else ' (too_long=skip)'}" +
        "".join(f"; {path.name}: {cut[f]:,} cut, {skipped[f]:,} skipped" for f, path in enumerate(paths)), start)

    tests = {task: test_items(root, task) for task in tasks}
    prompt_lengths = {task: [len(ids) for ids in enc.encode_ordinary_batch(
        [prompt(item["instruction"], item["input"]) for item in items])] for task, items in tests.items()}
    log("test items: " + ", ".join(f"{task} {len(items):,}" for task, items in tests.items()), start)
    long_prompts = {task: sum(n >= config.cutoff_len for n in ns) for task, ns in prompt_lengths.items()}
    if any(long_prompts.values()):
        log("test prompts of cutoff_len tokens or more (evaluation still reads them whole, up to the model's "
            "context): " + ", ".join(f"{task} {n}" for task, n in long_prompts.items() if n), start)

    files = {**tokenizer_copy, **{f"{name}.bin": array.tobytes() for name, array in finetune.items()}}
    listed = {name: f"{name}.bin" for name in finetune}
    if tokenizer_copy:
        listed["tokenizer"] = {Path(name).name: name for name in tokenizer_copy}
    listed["tasks"] = {task: {"test": f"tasks/{task}/test.json"} for task in tasks}
    for task, items in tests.items():
        files[listed["tasks"][task]["test"]] = json_bytes(items)

    train_files = []
    for f, path in enumerate(paths):
        in_split = {split.removeprefix("finetune_"): sum(1 for g, _ in examples if g == f)
                    for split, examples in splits.items()}
        train_files.append({"name": path.name, "path": str(path.resolve()),
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "items": per_file[f],
                            **in_split, "cut": cut[f], "skipped": skipped[f]})
    meta = {
        "source": "llm_adapters",
        "vocab_size": enc.n_vocab,
        "eot_token": enc.eot_token,
        "tokenizer": tokenizer_name,
        "tasks": tasks,
        "math_tasks": [task for task in tasks if task in MATH_ORDER],
        "commonsense_tasks": [task for task in tasks if task in COMMONSENSE_ORDER],
        "sizes": {task: {"test": len(items)} for task, items in tests.items()},
        "finetune_examples": n_examples,
        "train_files": train_files,
        "train_on_inputs": config.train_on_inputs,
        "cutoff_len": config.cutoff_len,
        "files": listed,
        "config": {key: value for key, value in dataclasses.asdict(config).items() if key != "out"},
        "tokens": {name: len(array) for name, array in finetune.items() if array.dtype == np.uint16},
        "max_new_tokens": {task: MAX_NEW_TOKENS[task] for task in tasks},
        "max_prompt_tokens": {task: max(ns) for task, ns in prompt_lengths.items()},
        "max_output_tokens": {task: max(len(ids) for ids in enc.encode_ordinary_batch(
            [item["output"] for item in tests[task]])) + 1 for task in tasks},
    }
    # meta.json last: its presence says the rest is complete
    files["meta.json"] = json_bytes(meta)
    written = [name for name, data in files.items() if write_if_changed(out / name, data)]
    log(f"wrote {len(written)} of {len(files)} files" + (" (all unchanged)" if not written else ""), start)
    return meta


if __name__ == "__main__":
    # a bad option or a bad file (ValueError, cli.ConfigError among them) or a missing one: one line
    try:
        prepare(cli.parse(LLMAdaptersConfig, sys.argv[1:]))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
