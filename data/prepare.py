"""Build the bundled data: the corpus, the eleven tasks, the tokenizer and the token files training reads.

    python -m data.prepare                          # the default, into out/data (a few seconds on 2 cores)
    python -m data.prepare --out=DIR --seed=N --train_on_inputs=1 --scale=0.1 --vocab_size=4096 --tokenizer=gpt2
    python -m data.prepare --help                   # the options, their types and defaults

LLM-Adapters' own files (math_10k.json, dataset/<Task>/test.json) go through data/prepare_llm_adapters.py into
this same layout (its docstring says what differs).

Options (PrepareConfig's fields, parsed by cli.py as train.py's are: --key=value or a .toml preset; an unknown
key or a value of the wrong type stops it with one line "error: ..."):
    out              the data directory (default out/data)
    seed             everything generated follows from it (default 0)
    train_on_inputs  1: the loss counts prompt tokens too, as LLM-Adapters' --train_on_inputs (default 0)
    scale            multiplies the corpus and task sizes; tests build a small version (default 1)
    vocab_size       the most tokens the trained BPE may have, <|endoftext|> included (default 4096); training
                     stops earlier once every word of the text is one token
    tokenizer        "bpe" (trained here, offline), a Hugging Face GPT-2 directory (its vocab.json + merges.txt),
                     a .tiktoken file, or "gpt2" (tiktoken's, needs tiktoken's files); see data/tokenizer.py
    rationales       0: commonsense outputs are LLM-Adapters' bare "the correct answer is <label>", without
                     the short rationale before it (default 1; see data/synthetic/commonsense_tasks.py)

Re-running with the same options leaves every file as it was: everything is regenerated in memory and a file
is written only when its bytes differ (each line of progress says which). From Python, ensure(data_dir, seed)
builds only when the directory does not hold that build yet, and returns meta.

The data directory
------------------
meta.json
    {"seed", "vocab_size" (n_vocab of the encoding), "eot_token" (its id), "tokenizer" ("tokenizer.tiktoken",
     or --tokenizer as given), "tasks" (the 11 names, math first, then commonsense), "math_tasks", "commonsense_tasks",
     "sizes": {task: {"train", "val", "test"}} (item counts; "val" items are inside "train"),
     "train_on_inputs", "files" (every file below, relative to the directory), "config" (the options),
     "tokens" (token counts of the .bin files), "corpus_bytes_per_token", "tokens_missing_from_corpus" (the
     tokens of the fine-tuning files and test items that pretrain_train holds fewer than MIN_CORPUS_COUNT
     times, as text; empty in the default build), "max_prompt_tokens" and "max_output_tokens" ({task:
     longest, over train and test; an output's count includes its closing eot}, to bound decoding)}
    and "tokenizer_hash" (data.tokenizer.tokenizer_hash: checkpoints record it, and training and evaluation
    refuse data whose tokenizer is not the one a checkpoint was trained with)
tokenizer.tiktoken, tokenizer.json
    the BPE in tiktoken's file format, and its split pattern and special tokens; data.tokenizer.load_tokenizer
    (this directory) gives the tiktoken.Encoding
corpus.txt
    the pretraining corpus, documents separated by blank lines (for reading; training reads the .bin files)
pretrain_train.bin, pretrain_val.bin
    uint16 token ids of the corpus documents, each followed by eot; the last PRETRAIN_VAL_FRACTION of the
    documents are val. np.memmap(path, dtype=np.uint16, mode="r"), as nanoGPT.
finetune_train.bin, finetune_val.bin
    uint16 token ids of fine-tuning examples laid end to end, each example prompt(instruction, input) +
    output + eot, the prompt and the output encoded separately (as at inference, where the model continues
    the encoded prompt). Examples of all tasks are shuffled together, deterministically. finetune_val is
    the last VAL_FRACTION of each task's train.json items, held out; the test splits are not in either.
finetune_{train,val}_mask.bin
    uint8, one per token: 1 where the token counts for the loss (the output and its closing eot), else 0;
    all ones with train_on_inputs
finetune_{train,val}_idx.bin
    int64 start offset of each example, then the end of the last: example i is tokens[idx[i]:idx[i+1]]
finetune_{train,val}_task.bin
    uint8 per example: its task's index into meta["tasks"]
tasks/<task>/train.json, tasks/<task>/test.json
    the items in LLM-Adapters' format; evaluation reads test.json with data.llm_adapters.load_json and
    scores generations with is_correct(task, output, answer)
"""

import dataclasses
import json
import os
import random
import time
from pathlib import Path

import numpy as np

import cli
from data.llm_adapters import prompt
from data.synthetic import tasks as suite
from data.synthetic.corpus import make_corpus
from data.tokenizer import TOKENIZER_FILE, count_words, load_tokenizer, make_encoding
from data.tokenizer import tiktoken_file_bytes, tokenizer_hash, tokenizer_json_bytes, train_bpe

PRETRAIN_VAL_FRACTION = 0.05  # share of corpus documents held out as pretrain_val
# Each token of the suite (its fine-tuning files and test items) should occur this often in pretrain_train:
# fine-tuning only adapters leaves the embeddings as pretraining made them, and a token the corpus never
# shows keeps its random one (the model can neither read it nor write it).
MIN_CORPUS_COUNT = 20


@dataclasses.dataclass
class PrepareConfig:
    out: str = "out/data"
    seed: int = 0
    train_on_inputs: bool = False
    scale: float = 1.0
    vocab_size: int = 4096
    tokenizer: str = "bpe"
    rationales: bool = True

    def __post_init__(self):
        # 256 bytes and <|endoftext|> at least; the token files are uint16
        cli.check(self, {"out": cli.matching(".+", "a directory"), "scale": cli.above(0),
                         "vocab_size": cli.between(257, 2 ** 16)})


# ----------------------------------------------------------------------------------------------------------
# Small tools

def log(message, start):
    print(f"[prepare {time.time() - start:5.1f}s] {message}", flush=True)


def write_if_changed(path, data):
    """Write the bytes unless the file already holds them; atomic (a reader never sees half a file).
    Returns whether it wrote."""
    path = Path(path)
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return True


def json_bytes(value):
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------------------------------
# The steps

def build_tokenizer(config, docs, tasks):
    """(encoding, files to write). "bpe" trains on the corpus and the training items (as the model will read
    them: prompt + output), never on test items; anything else names a tokenizer for load_tokenizer."""
    if config.tokenizer != "bpe":
        try:
            return load_tokenizer(config.tokenizer), {}
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"--tokenizer takes bpe or a tokenizer to load: {e}") from None
    examples = [prompt(item["instruction"], item["input"]) + item["output"] for train, _ in tasks.values()
                for item in train]
    vocab = train_bpe(count_words(docs + examples), config.vocab_size - 1)  # one id left for <|endoftext|>
    name = f"moelora-bpe-{len(vocab) + 1}"
    files = {TOKENIZER_FILE: tiktoken_file_bytes(vocab), "tokenizer.json": tokenizer_json_bytes(name, vocab)}
    return make_encoding(name, vocab), files


def pretrain_tokens(enc, docs):
    """uint16 ids of the documents, each followed by eot."""
    ids = []
    for doc_ids in enc.encode_ordinary_batch(docs):
        ids.extend(doc_ids)
        ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint16)


def finetune_arrays(enc, examples, train_on_inputs):
    """The token, mask, offset and task arrays of a list of (task index, item)."""
    prompts = enc.encode_ordinary_batch([prompt(item["instruction"], item["input"]) for _, item in examples])
    outputs = enc.encode_ordinary_batch([item["output"] for _, item in examples])
    tokens, mask, offsets = [], [], [0]
    for prompt_ids, output_ids in zip(prompts, outputs):
        response = output_ids + [enc.eot_token]
        tokens += prompt_ids + response
        mask += [int(train_on_inputs)] * len(prompt_ids) + [1] * len(response)
        offsets.append(len(tokens))
    return {
        "": np.array(tokens, dtype=np.uint16),
        "_mask": np.array(mask, dtype=np.uint8),
        "_idx": np.array(offsets, dtype=np.int64),
        "_task": np.array([task for task, _ in examples], dtype=np.uint8),
    }


def finetune_examples(tasks, sizes, seed):
    """(train examples, val examples) as (task index, item), each list shuffled across tasks; val is the last
    sizes[task]["val"] training items of each task."""
    train, val = [], []
    for index, (task, (items, _)) in enumerate(tasks.items()):
        n_val = sizes[task]["val"]
        train += [(index, item) for item in items[:len(items) - n_val]]
        val += [(index, item) for item in items[len(items) - n_val:]]
    rng = random.Random(f"finetune-{seed}")
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def tokens_missing_from_corpus(enc, pretrain_ids, suite_ids):
    """(the tokens among suite_ids that pretrain_ids holds fewer than MIN_CORPUS_COUNT times, as text in id
    order; how many different tokens suite_ids holds)."""
    corpus_counts = np.bincount(pretrain_ids, minlength=enc.n_vocab)
    used = np.unique(suite_ids)
    return [enc.decode([int(t)]) for t in used if corpus_counts[t] < MIN_CORPUS_COUNT], len(used)


def longest(enc, texts, plus=0):
    return max(len(ids) for ids in enc.encode_ordinary_batch(texts)) + plus


# ----------------------------------------------------------------------------------------------------------

def prepare(config):
    """Build (or confirm) the data directory for the config; returns meta."""
    start = time.time()
    out = Path(config.out)
    log(f"building into {out} (seed {config.seed}, scale {config.scale}, tokenizer {config.tokenizer})", start)

    docs = make_corpus(config.seed, config.scale)
    corpus_text = "\n\n".join(docs) + "\n"
    log(f"corpus: {len(docs):,} documents, {len(corpus_text.encode()) / 1e6:.2f} MB", start)

    tasks = suite.make_tasks(config.seed, config.scale, config.rationales)
    sizes = suite.sizes(config.scale)
    log(f"tasks: {len(tasks)}, {sum(len(tr) for tr, _ in tasks.values()):,} train and "
        f"{sum(len(te) for _, te in tasks.values()):,} test items", start)

    enc, files = build_tokenizer(config, docs, tasks)
    if enc.n_vocab > 2 ** 16:
        raise ValueError(f"{enc.n_vocab} tokens do not fit the uint16 token files")
    log(f"tokenizer: {enc.name}, {enc.n_vocab:,} tokens", start)

    n_val_docs = max(1, round(len(docs) * PRETRAIN_VAL_FRACTION))
    pretrain = {"pretrain_train": pretrain_tokens(enc, docs[:-n_val_docs]),
                "pretrain_val": pretrain_tokens(enc, docs[-n_val_docs:])}
    corpus_tokens = sum(len(ids) for ids in pretrain.values()) - len(docs)  # less the eots
    log(f"pretrain tokens: {len(pretrain['pretrain_train']):,} train, {len(pretrain['pretrain_val']):,} val, "
        f"{len(corpus_text.encode()) / corpus_tokens:.2f} bytes per token", start)

    train_examples, val_examples = finetune_examples(tasks, sizes, config.seed)
    finetune = {}
    for split, examples in (("finetune_train", train_examples), ("finetune_val", val_examples)):
        for suffix, array in finetune_arrays(enc, examples, config.train_on_inputs).items():
            finetune[split + suffix] = array
    log(f"finetune tokens: {len(finetune['finetune_train']):,} train ({len(train_examples):,} examples), "
        f"{len(finetune['finetune_val']):,} val ({len(val_examples):,} examples)", start)

    test_texts = [prompt(i["instruction"], i["input"]) + i["output"] for _, test in tasks.values() for i in test]
    suite_ids = np.concatenate([finetune["finetune_train"], finetune["finetune_val"],
                                *map(np.array, enc.encode_ordinary_batch(test_texts))])
    missing, n_used = tokens_missing_from_corpus(enc, pretrain["pretrain_train"], suite_ids)
    log(f"corpus coverage: {n_used - len(missing)} of the suite's {n_used} tokens occur at least "
        f"{MIN_CORPUS_COUNT} times in pretrain_train" + (f"; not: {missing[:20]}" if missing else ""), start)

    files["corpus.txt"] = corpus_text.encode("utf-8")
    files.update({f"{name}.bin": array.tobytes() for name, array in {**pretrain, **finetune}.items()})
    # meta's "files": the name each file goes by, and its path in the directory
    listed = {"corpus": "corpus.txt", **{name: f"{name}.bin" for name in {**pretrain, **finetune}}}
    if config.tokenizer == "bpe":
        listed.update(tokenizer=TOKENIZER_FILE, tokenizer_info="tokenizer.json")
    listed["tasks"] = {}
    for task, (train, test) in tasks.items():
        listed["tasks"][task] = {"train": f"tasks/{task}/train.json", "test": f"tasks/{task}/test.json"}
        files[listed["tasks"][task]["train"]] = json_bytes(train)
        files[listed["tasks"][task]["test"]] = json_bytes(test)

    meta = {
        "seed": config.seed,
        "vocab_size": enc.n_vocab,
        "eot_token": enc.eot_token,
        "tokenizer": TOKENIZER_FILE if config.tokenizer == "bpe" else config.tokenizer,
        "tokenizer_hash": tokenizer_hash(enc),
        "tasks": suite.TASKS,
        "math_tasks": suite.MATH_TASKS,
        "commonsense_tasks": suite.COMMONSENSE_TASKS,
        "sizes": sizes,
        "train_on_inputs": config.train_on_inputs,
        "files": listed,
        "config": {key: value for key, value in dataclasses.asdict(config).items() if key != "out"},
        "tokens": {name: len(array) for name, array in {**pretrain, **finetune}.items() if array.dtype == np.uint16},
        "corpus_bytes_per_token": round(len(corpus_text.encode()) / corpus_tokens, 4),
        "tokens_missing_from_corpus": missing,
        "max_prompt_tokens": {task: longest(enc, [prompt(i["instruction"], i["input"]) for i in tr + te])
                              for task, (tr, te) in tasks.items()},
        "max_output_tokens": {task: longest(enc, [i["output"] for i in tr + te], plus=1)
                              for task, (tr, te) in tasks.items()},
    }
    # meta.json last: its presence says the rest is complete
    files["meta.json"] = json_bytes(meta)
    written = [name for name, data in files.items() if write_if_changed(out / name, data)]
    log(f"wrote {len(written)} of {len(files)} files" + (" (all unchanged)" if not written else ""), start)
    return meta


def ensure(data_dir="out/data", seed=0, **options):
    """meta of the data directory, building it first unless it already holds this build (same options)."""
    config = PrepareConfig(out=str(data_dir), seed=seed, **options)
    try:
        meta = read_meta(data_dir)
    except (FileNotFoundError, ValueError):  # no build there, or a broken one: build it
        meta = None
    wanted = {key: value for key, value in dataclasses.asdict(config).items() if key != "out"}
    if meta and meta.get("config") == wanted and all_files_present(Path(data_dir), meta["files"]):
        return meta
    return prepare(config)


def read_meta(data_dir):
    """meta.json of a data directory; a missing, unreadable or foreign one is an error that names it."""
    path = Path(data_dir) / "meta.json"
    rebuild = f"run python -m data.prepare --out={data_dir}"
    if not path.is_file():
        raise FileNotFoundError(f"no prepared data in {data_dir} (no meta.json): {rebuild}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} cannot be read ({e}): {rebuild}") from None
    missing = [key for key in ("vocab_size", "eot_token", "tokenizer", "tasks", "tokens", "files")
               if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ValueError(f"{path} is not data.prepare's meta.json (it lacks {', '.join(missing)}): {rebuild}")
    return meta


def all_files_present(root, files):
    """Whether every path in meta["files"] (a nested dict of relative paths) exists under root."""
    if isinstance(files, dict):
        return all(all_files_present(root, value) for value in files.values())
    return (root / files).exists()


if __name__ == "__main__":
    # a bad option, a file that cannot be written: one line "error: ..." (cli.run)
    cli.run(lambda argv: prepare(cli.parse(PrepareConfig, argv)))
