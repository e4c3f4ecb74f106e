"""LLM-Adapters' files, end to end: the tests write them in LLM-Adapters' layout and field names (a few items
per task, math and commonsense, training files and test sets), with a small GPT-2-style tokenizer
(vocab.json + merges.txt) and a random GPT-2 in Hugging Face's layout beside it; then prepare -> train ->
evaluate, as the README's commands do. Also: the token files and their cut/skip counts, the bad-file errors,
and that GPT-2's four real configurations load.

    python -m pytest tests/test_llm_adapters.py -q
    MOELORA_E2E_GPT2=gpt2-xl python -m pytest tests/test_llm_adapters.py -q -s -k end_to_end   # real shapes (GPU)

MOELORA_E2E_GPT2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) gives the end-to-end test's model that size, random
weights of GPT-2's real shapes; it trains on CUDA where there is one.
"""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import model
import train
from data.llm_adapters import prompt
from data.prepare_llm_adapters import LLMAdaptersConfig, prepare
from data.tokenizer import load_hf_tokenizer, load_tokenizer
from test_hf_tokenizer import train_gpt2_files, write_hf_dir

ROOT = Path(__file__).resolve().parent.parent
MATH = ("MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP")
COMMONSENSE = ("boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa")
# GPT-2's four sizes as their config.json files give them (the keys our loader reads, and some it ignores)
GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
              "gpt2-xl": (48, 25, 1600)}
GPT2_PARAMETERS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                   "gpt2-xl": 1_557_611_200}


# ----------------------------------------------------------------------------------------------------------
# LLM-Adapters' files, written here: same layout, same fields, same answer formats, our own text

def math_item(i, choices=False):
    a, b = 3 + i, 4 + 2 * i
    question = f"Sam has {a} marbles and finds {b} more in the garden. How many marbles does Sam have now?"
    rationale = f"\nA: Sam starts with {a} marbles. He finds {b} more, so he has {a} + {b} = {a + b} marbles."
    if not choices:
        return {"instruction": question, "input": "", "output": rationale + f" The answer is {a + b}.",
                "answer": str(a + b)}
    options = [a + b + d for d in (-2, -1, 0, 1, 2)]
    options = options[i % 5:] + options[:i % 5]  # the right one moves around
    letter = "ABCDE"[options.index(a + b)]
    listed = " ".join(f"({x}) {v}" for x, v in zip("ABCDE", options))
    return {"instruction": f"{question} Answer Choices: {listed}", "input": "",
            "output": rationale.replace("\nA:", "\nRationale:") + f" The answer is ({letter}).", "answer": letter}


def commonsense_item(task, i):
    if task == "boolq":
        truth = i % 2 == 0
        q = f"is {i + 2} {'smaller' if truth else 'larger'} than {i + 5}"
        return {"instruction": f"Please answer the following question with true or false, question: {q}?\n\n"
                               f"Answer format: true/false", "input": "",
                "output": f"the correct answer is {str(truth).lower()}", "answer": str(truth).lower()}
    if task == "piqa":
        right = 1 + i % 2
        sols = ["dry the plate with a towel", "dry the plate with a sponge full of water"]
        sols = sols if right == 1 else sols[::-1]
        return {"instruction": f"Please choose the correct solution to the question: How do I dry plate {i}?\n\n"
                               f"Solution1: {sols[0]}\n\nSolution2: {sols[1]}\n\nAnswer format: solution1/solution2",
                "input": "", "output": f"the correct answer is solution{right}", "answer": f"solution{right}"}
    right = 1 + i % 4
    answers = [f"{i + 3 + d} legs" for d in range(4)]
    answers[right - 1], answers[0] = answers[0], answers[right - 1]
    body = "\n\n".join(f"Answer{k + 1}: {a}" for k, a in enumerate(answers))
    return {"instruction": f"Please choose the correct answer to the question: How many legs do {i + 3} chairs "
                           f"with one leg each have?\n\n{body}\n\nAnswer format: answer1/answer2/answer3/answer4",
            "input": "", "output": f"the correct answer is answer{right}", "answer": f"answer{right}"}


def long_math_item():
    """A GSM8K-style item whose rationale runs past cutoff_len=256 tokens."""
    steps = " ".join(f"Then {k} + 1 = {k + 1} marbles." for k in range(60))
    return {"instruction": "Sam counts his marbles one by one. How many does he reach?", "input": "",
            "output": f"\nA: {steps} The answer is 60.", "answer": "60"}


def huge_prompt_item():
    """An item whose prompt alone is longer than cutoff_len=256 tokens."""
    return {"instruction": "Please answer the following question with true or false, question: " +
                           "is this a very long question " * 60 + "?\n\nAnswer format: true/false",
            "input": "", "output": "the correct answer is true", "answer": "true"}


def write_llm_adapters(root):
    """LLM-Adapters' layout: ft-training_set/{math_10k,commonsense_170k}.json, dataset/<Task>/test.json."""
    math_train = [math_item(i, choices=i % 4 == 3) for i in range(10)] + [long_math_item()]
    # Alpaca-style items: an input (the other template), no answer or one no test would take (finetune.py
    # reads none)
    math_train.append({"instruction": "Add the two numbers.", "input": "12 and 30", "output": "12 + 30 = 42. The "
                       "answer is 42."})
    math_train[0]["answer"] = None
    cs_train = [commonsense_item(task, i) for i in range(3) for task in ("boolq", "piqa", "ARC-Easy")]
    cs_train.append(huge_prompt_item())
    files = {"ft-training_set/math_10k.json": math_train, "ft-training_set/commonsense_170k.json": cs_train}
    for task in MATH:
        files[f"dataset/{task}/test.json"] = [math_item(20 + i, choices=task == "AQuA") for i in range(3)]
    files["dataset/mawps/test.json"] = [dict(math_item(30), output="")]  # mawps' test items have no output
    for task in COMMONSENSE:
        files[f"dataset/{task}/test.json"] = [commonsense_item(task, 20 + i) for i in range(3)]
    for name, items in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(items, indent=4))
    return root


def tokenizer_texts(root):
    """The text the small tokenizer's merges are learnt from: the prompts and outputs of every file."""
    texts = []
    for path in sorted(root.rglob("*.json")):
        texts += [prompt(item["instruction"], item["input"]) + item["output"] for item in json.loads(path.read_text())]
    return texts


def write_hf_gpt2(directory, n_layer, n_head, n_embd, vocab_size, n_positions, seed=0):
    """A random GPT-2 in Hugging Face's layout (config.json + model.safetensors: Conv1D weights stored (in, out),
    names under transformer.), with GPT-2's own init."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    gpt = model.GPT(model.GPTConfig(block_size=n_positions, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                                    n_embd=n_embd))
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    # our names are Hugging Face's; the tied lm_head is saved apart (safetensors refuses shared memory)
    tensors = {name: (t.t() if name.endswith(conv1d) else t).contiguous().clone()
               for name, t in gpt.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
              "n_positions": n_positions, "n_ctx": n_positions, "vocab_size": vocab_size, "n_layer": n_layer,
              "n_head": n_head, "n_embd": n_embd, "layer_norm_epsilon": 1e-5, "bos_token_id": vocab_size - 1,
              "eos_token_id": vocab_size - 1}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(LLM-Adapters directory, Hugging Face GPT-2 directory with its vocab.json + merges.txt)."""
    root = write_llm_adapters(tmp_path_factory.mktemp("LLM-Adapters"))
    vocab, merges = train_gpt2_files(tokenizer_texts(root), 200)
    gpt2 = write_hf_dir(tmp_path_factory.mktemp("models") / "gpt2-tiny", vocab, merges)
    size = os.environ.get("MOELORA_E2E_GPT2")
    if size:  # GPT-2's real blocks and context; the vocabulary stays the small tokenizer's, as load_base checks
        write_hf_gpt2(gpt2, *GPT2_SIZES[size], vocab_size=len(vocab), n_positions=1024)
    else:
        write_hf_gpt2(gpt2, n_layer=1, n_head=2, n_embd=32, vocab_size=len(vocab), n_positions=448)
    return root, gpt2


def options(files, out, **overrides):
    root, gpt2 = files
    return LLMAdaptersConfig(**{"llm_adapters": str(root), "tokenizer": str(gpt2), "out": str(out),
                                "train": ("math_10k.json", "commonsense_170k.json"),
                                "tasks": MATH + COMMONSENSE, "val_set_size": 2, **overrides})


def examples(out, split):
    tokens = np.fromfile(out / f"finetune_{split}.bin", dtype=np.uint16)
    mask = np.fromfile(out / f"finetune_{split}_mask.bin", dtype=np.uint8)
    idx = np.fromfile(out / f"finetune_{split}_idx.bin", dtype=np.int64)
    return [(tokens[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(idx[:-1], idx[1:])]


# ----------------------------------------------------------------------------------------------------------

def test_end_to_end_prepare_train_evaluate(files, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    meta = prepare(options(files, data))
    real = os.environ.get("MOELORA_E2E_GPT2")
    cuda = torch.cuda.is_available() and real
    # at real shapes LLM-Adapters' lengths (256 tokens for math); on CPU a few tokens (test_decoding_lengths
    # checks the rule)
    decode = [] if real else ["--max_new_tokens=12"]
    train.main(["--mode=finetune", f"--init_from={files[1]}", f"--data_dir={data}", f"--out_dir={run}",
                "--train_on_inputs=1", "--adapter.kind=moelora", "--adapter.r=2", "--adapter.n_experts=4",
                "--adapter.targets=attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj", "--batch_size=2", "--max_iters=2",
                "--eval_interval=2", "--eval_iters=1", "--warmup_iters=1", "--lr=3e-4",
                f"--device={'cuda' if cuda else 'cpu'}"])
    report = evaluate.main([f"--ckpt={run}/ckpt.pt", f"--out={run}", "--batch_size=8",
                            f"--device={'cuda' if cuda else 'cpu'}", *decode])["run"]
    assert report["n"] == {task: 3 for task in MATH + COMMONSENSE}
    assert report["too_long"] == {task: 0 for task in MATH + COMMONSENSE}
    table = (run / "eval.md").read_text().splitlines()
    assert table[0] == ("| model | MultiArith | GSM8K | AddSub | AQuA | SingleEq | SVAMP | math avg | BoolQ | PIQA | "
                        "ARC-e | ARC-c | OBQA | cs avg | avg |")
    acc = report["accuracy"]
    cells = [float(c) for c in table[2].split("|")[2:-1]]
    math_avg, cs_avg = (100 * sum(acc[t] for t in group) / len(group) for group in (MATH, COMMONSENSE))
    assert cells[6] == pytest.approx(math_avg, abs=0.05) and cells[12] == pytest.approx(cs_avg, abs=0.05)
    assert cells[13] == pytest.approx(100 * sum(acc.values()) / 11, abs=0.05)
    assert meta["max_new_tokens"] == {**{t: 256 for t in MATH}, **{t: 32 for t in COMMONSENSE}}


def test_token_files_follow_llm_adapters(files, tmp_path):
    """prompt + output + eot per example, cut at cutoff_len; train_on_inputs masks nothing; the held-out items
    are val_set_size of them; the data directory holds its tokenizer."""
    out = tmp_path / "data"
    meta = prepare(options(files, out))
    root, gpt2 = files
    enc = load_hf_tokenizer(gpt2)
    items = [json.loads((root / "ft-training_set" / name).read_text()) for name in ("math_10k.json",
                                                                                    "commonsense_170k.json")]
    expected = {}
    for file_items in items:
        for item in file_items:
            ids = enc.encode_ordinary(prompt(item["instruction"], item["input"])) + \
                enc.encode_ordinary(item["output"]) + [enc.eot_token]
            expected[tuple(ids[:256])] = len(ids) > 256
    got = examples(out, "train") + examples(out, "val")
    assert len(got) == len(expected) == 12 + 10 and len(examples(out, "val")) == 2
    assert {tuple(ids) for ids, _ in got} == set(expected)
    assert all(set(mask) == {1} for _, mask in got)  # train_on_inputs=1, LLM-Adapters' default
    assert sum(meta["finetune_examples"].values()) == 22 and meta["train_on_inputs"] is True
    assert [(f["name"], f["items"], f["cut"], f["skipped"]) for f in meta["train_files"]] == \
        [("math_10k.json", 12, 1, 0), ("commonsense_170k.json", 10, 1, 0)] and sum(expected.values()) == 2
    assert max(len(ids) for ids, _ in got) == 256
    files_of = np.concatenate([np.fromfile(out / f"finetune_{s}_file.bin", dtype=np.uint8) for s in ("train", "val")])
    assert sorted(files_of.tolist()) == [0] * 12 + [1] * 10
    # the tests under their names, as written; the tokenizer copied in: it loads with the source gone
    for task in MATH + COMMONSENSE:
        assert json.loads((out / "tasks" / task / "test.json").read_text()) == \
            json.loads((root / "dataset" / task / "test.json").read_text())
    assert meta["tasks"] == [*MATH, *COMMONSENSE] and meta["tokenizer"] == "tokenizer"
    (gpt2 / "vocab.json").rename(gpt2 / "vocab.moved")
    try:
        text = prompt(items[0][0]["instruction"]) + items[0][0]["output"]
        assert load_tokenizer(out).encode_ordinary(text) == enc.encode_ordinary(text)
    finally:
        (gpt2 / "vocab.moved").rename(gpt2 / "vocab.json")
    # the same options, the same bytes: nothing rewritten
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    prepare(options(files, out))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_prompt_masked_and_long_items_cut_or_skipped(files, tmp_path, capsys):
    """train_on_inputs=0: the loss counts the output and its eot; an item whose prompt fills cutoff_len has
    nothing left to learn and is skipped; too_long=skip drops every long item. All counted in the log."""
    enc = load_hf_tokenizer(files[1])
    meta = prepare(options(files, tmp_path / "masked", train_on_inputs=False))
    assert [(f["cut"], f["skipped"]) for f in meta["train_files"]] == [(1, 0), (0, 1)]
    assert "1 cut to it" in capsys.readouterr().out
    for ids, mask in examples(tmp_path / "masked", "train") + examples(tmp_path / "masked", "val"):
        n_prompt = mask.index(1)
        assert set(mask[:n_prompt]) == {0} and set(mask[n_prompt:]) == {1}
        assert enc.decode(ids[:n_prompt]).endswith("### Response:\n")
    meta = prepare(options(files, tmp_path / "skip", too_long="skip"))
    assert [(f["cut"], f["skipped"]) for f in meta["train_files"]] == [(0, 1), (0, 1)]
    log = capsys.readouterr().out
    assert "0 cut to it" in log and "2 skipped (too_long=skip)" in log
    assert sum(meta["finetune_examples"].values()) == 20


def write_bad(root, where, path, content):
    """A copy of the LLM-Adapters directory in where/, with one file replaced (bytes, or items as JSON)."""
    for p in root.rglob("*.json"):
        target = where / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    (where / path).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return where


GOOD = math_item(1)
BAD_FILES = [
    ("ft-training_set/math_10k.json", [GOOD, GOOD, {k: v for k, v in GOOD.items() if k != "output"}],
     r"math_10k.json: item 2: missing field\(s\) output"),
    ("ft-training_set/math_10k.json", [GOOD, dict(GOOD, instruction=7)],
     r"math_10k.json: item 1: field 'instruction' should be a string, found a int"),
    ("ft-training_set/commonsense_170k.json", b'[{"instruction": "caf\xe9", "input": "", "output": ""}]',
     r"commonsense_170k.json: not a valid JSON file \('utf-8' codec can't decode byte 0xe9"),
    ("ft-training_set/commonsense_170k.json", {"instruction": "q"}, r"expected a JSON list of items, found a dict"),
    ("dataset/gsm8k/test.json", [GOOD, dict(GOOD, answer="forty")],
     r"gsm8k/test.json: item 1: field 'answer' should be a number for gsm8k, found 'forty'"),
    ("dataset/AQuA/test.json", [dict(GOOD, answer="F")],
     r"AQuA/test.json: item 0: field 'answer' should be one of A, B, C, D, E for AQuA, found 'F'"),
    ("dataset/boolq/test.json", [commonsense_item("boolq", 0), dict(commonsense_item("boolq", 1), answer="yes")],
     r"boolq/test.json: item 1: field 'answer' should be one of true, false for boolq, found 'yes'"),
    ("dataset/piqa/test.json", [{k: v for k, v in commonsense_item("piqa", 0).items() if k != "answer"}],
     r"piqa/test.json: item 0: missing field\(s\) answer"),
]


@pytest.mark.parametrize("path, content, words", BAD_FILES)
def test_bad_files_are_named_with_item_and_field(files, tmp_path, path, content, words):
    bad = write_bad(files[0], tmp_path / "LLM-Adapters", path, content)
    with pytest.raises(ValueError, match=words) as error:
        prepare(options((bad, files[1]), tmp_path / "data"))
    assert str(bad / path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, error, words", [
    ({"tasks": ("gsm8k", "GSM9K")}, ValueError, r"--tasks: unknown task\(s\) GSM9K; LLM-Adapters' test sets are "
                                               r"MultiArith, gsm8k, .*openbookqa"),
    ({"tasks": ("mawps", "hellaswag")}, FileNotFoundError, r"dataset/hellaswag/test.json does not exist"),
    ({"train": ("math_50k.json",)}, FileNotFoundError, r"training file math_50k.json: not in .*ft-training_set"),
    ({"val_set_size": 22}, ValueError, r"--val_set_size=22 leaves no training item of the 22"),
    ({"val_set_size": 0}, ValueError, r"--val_set_size=0"),
    ({"tokenizer": ""}, ValueError, r"--tokenizer: give the model's tokenizer"),
    ({"cutoff_len": 512}, ValueError, r"--cutoff_len=512 is longer than the model's context \(448 tokens"),
    ({"too_long": "drop"}, ValueError, r"--too_long='drop': cut or skip"),
    ({"llm_adapters": "nowhere"}, ValueError, r"--llm_adapters='nowhere': give the directory"),
])
def test_bad_options(files, tmp_path, overrides, error, words):
    if "cutoff_len" in overrides and os.environ.get("MOELORA_E2E_GPT2"):
        pytest.skip("the real shapes' context is 1024")
    with pytest.raises(error, match=words):
        prepare(options(files, tmp_path / "data", **overrides))


def test_task_names_any_case_in_the_tables_order(files, tmp_path):
    meta = prepare(options(files, tmp_path / "data", tasks=("ARC-easy", "GSM8K", "mawps", "boolq", "addsub")))
    assert meta["tasks"] == ["gsm8k", "AddSub", "mawps", "boolq", "ARC-Easy"]
    assert (meta["math_tasks"], meta["commonsense_tasks"]) == (["gsm8k", "AddSub", "mawps"], ["boolq", "ARC-Easy"])
    rows = {"m": {"gsm8k": 0.5, "AddSub": 1.0, "mawps": 0.0, "boolq": 1.0, "ARC-Easy": 0.5}}
    assert evaluate.format_table(rows, meta).splitlines()[::2] == [
        "| model | GSM8K | AddSub | MAWPS | math avg | BoolQ | ARC-e | cs avg | avg |",
        "| m | 50.0 | 100.0 | 0.0 | 50.0 | 100.0 | 50.0 | 75.0 | 60.0 |"]
    math_only = dict(meta, commonsense_tasks=[])
    header = evaluate.format_table(rows, math_only).splitlines()[0]
    assert header == "| model | GSM8K | AddSub | MAWPS | math avg | avg |"


def test_the_command_reports_an_error_in_one_line(files, tmp_path):
    bad = write_bad(files[0], tmp_path / "LLM-Adapters", "dataset/gsm8k/test.json", [dict(GOOD, answer="forty")])
    result = subprocess.run([sys.executable, "-m", "data.prepare_llm_adapters", f"--llm_adapters={bad}",
                             f"--tokenizer={files[1]}", "--train=math_10k.json", "--val_set_size=2", "--tasks=gsm8k",
                             f"--out={tmp_path / 'data'}"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "item 0: field 'answer' should be a number" in result.stderr


def test_decoding_lengths(files, tmp_path):
    """LLM-Adapters' lengths where the data gives them, else the training outputs' rule; never past the context,
    batch by batch; a prompt that fills the context is counted and scored wrong."""
    out = tmp_path / "data"
    meta = prepare(options(files, out, tasks=("gsm8k", "boolq")))
    enc = load_tokenizer(out)
    assert evaluate.answer_length(enc, str(out), "gsm8k", meta) == 256
    assert evaluate.answer_length(enc, str(out), "boolq", meta) == 32

    class Recorder:  # stands in for a GPT: records what greedy_answers asks of it
        config = model.GPTConfig(block_size=120)
        asked = []

        def generate_batch(self, prompts, max_new_tokens, stop_token, pad_token):
            self.asked.append((sorted(map(len, prompts)), max_new_tokens))
            return [[enc.encode_ordinary(" 7")[0]] for _ in prompts]

    items = [{"instruction": "q " * n, "input": ""} for n in (5, 40, 300, 10)]
    lengths = [len(enc.encode(prompt(it["instruction"]))) for it in items]
    answers = evaluate.greedy_answers(Recorder(), enc, items, 256, enc.eot_token, batch_size=2)
    assert answers == [" 7", " 7", None, " 7"] and lengths[2] >= 120 > lengths[1]
    short, long = sorted([lengths[0], lengths[3]]), [lengths[1]]
    assert Recorder.asked == [(short, 120 - short[1]), (long, 120 - long[0])]


@pytest.mark.parametrize("size", GPT2_SIZES)
def test_every_gpt2_size_loads(size):
    """GPT-2's four configurations, as their config.json files give them, build and take tensors of Hugging
    Face's names and shapes (on the meta device: shapes without memory); the parameter counts are GPT-2's."""
    n_layer, n_head, n_embd = GPT2_SIZES[size]
    hf = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
          "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
          "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": n_embd, "n_head": n_head,
          "n_layer": n_layer, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
          "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
          "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
          "vocab_size": 50257, **({"n_special": 0, "predict_special_tokens": True} if size != "gpt2" else {})}
    config = model._config_from_hf(hf, dropout=0.0)
    with torch.device("meta"):
        gpt = model.GPT(config)
        tensors = {"h.0.attn.bias": torch.empty(1, 1, 1024, 1024), "wte.weight": torch.empty(50257, n_embd),
                   "wpe.weight": torch.empty(1024, n_embd), "ln_f.weight": torch.empty(n_embd),
                   "ln_f.bias": torch.empty(n_embd)}
        for i in range(n_layer):
            shapes = {"ln_1.weight": (n_embd,), "ln_1.bias": (n_embd,), "ln_2.weight": (n_embd,),
                      "ln_2.bias": (n_embd,), "attn.c_attn.weight": (n_embd, 3 * n_embd),
                      "attn.c_attn.bias": (3 * n_embd,), "attn.c_proj.weight": (n_embd, n_embd),
                      "attn.c_proj.bias": (n_embd,), "mlp.c_fc.weight": (n_embd, 4 * n_embd),
                      "mlp.c_fc.bias": (4 * n_embd,), "mlp.c_proj.weight": (4 * n_embd, n_embd),
                      "mlp.c_proj.bias": (n_embd,)}
            tensors.update({f"h.{i}.{name}": torch.empty(shape) for name, shape in shapes.items()})
    gpt._load_hf_tensors(tensors, source=size)
    assert (config.block_size, config.vocab_size) == (1024, 50257)
    assert gpt.get_num_params(non_embedding=False) == GPT2_PARAMETERS[size]


def test_gpt2_sizes_benchmark_plumbing(tmp_path, capsys):
    """dev/gpt2_sizes.py on a tiny model (its --quick): one row per adapter, every figure there, one table."""
    from dev import gpt2_sizes
    rows = gpt2_sizes.main(["--quick=1", "--device=cpu", f"--json={tmp_path / 'sizes.json'}"])
    assert [(r["size"], r["adapter"]) for r in rows] == [("tiny", "lora"), ("tiny", "moelora")]
    for r in rows:
        for name in ("math_10k", "commonsense_170k"):
            assert r[name]["step_ms"] > 0 and r[name]["epoch_min"] > 0
            # each timed batch's padded length: at most cutoff_len - 1 (inputs are shifted); the steady step is the
            # median of the second runs; an epoch pays each of its distinct lengths' one-off cost once
            steps = r[name]["steps"]
            assert r[name]["step_ms"] == pytest.approx(statistics.median(s["again_ms"] for s in steps))
            assert all(0 < s["T"] <= gpt2_sizes.CUTOFF - 1 for s in steps)
            assert not any(s["new_length"] and s["T"] in {t["T"] for t in steps[:i]} for i, s in enumerate(steps))
            assert 0 < r[name]["epoch_lengths"] <= gpt2_sizes.CUTOFF - 1
            n_steps = math.ceil(gpt2_sizes.EPOCH_ITEMS[name] / 2)
            assert r[name]["epoch_min"] == pytest.approx(
                (n_steps * r[name]["step_ms"] + r[name]["epoch_lengths"] * r[name]["new_length_ms"]) / 6e4)
        assert r["eval_min"]["math"] > r["eval_min"]["commonsense"] > 0  # 66 x 256 steps against 146 x 32
    assert gpt2_sizes.eval_steps() == {"math": 66 * 256, "commonsense": 146 * 32}
    assert json.loads((tmp_path / "sizes.json").read_text())["rows"] == rows
    assert "| tiny | moelora | 2 | - |" in capsys.readouterr().out
    # the length histograms are distributions, cut at cutoff_len
    for bins in gpt2_sizes.LENGTHS.values():
        assert sum(share for _, _, share in bins) == pytest.approx(1.0) and bins[-1][:2] == (256, 257)
