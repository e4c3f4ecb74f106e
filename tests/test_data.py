"""Tests of the data package: the LLM-Adapters format and scoring, the tokenizer, the generated suite and the
files prepare writes. CPU only, a few seconds: one full default build and two small ones, each made once.

    python -m pytest tests/test_data.py -q
"""

import dataclasses
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import tiktoken.load

import cli
from data import tokenizer
from data.llm_adapters import STAND_INS, is_correct, load_json, prompt
from data.prepare import MIN_CORPUS_COUNT, PrepareConfig, build_tokenizer, ensure, prepare
from data.synthetic import corpus, tasks, world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = 0.05  # scale of the small builds


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The default build (scale 1), made once: (directory, meta)."""
    out = tmp_path_factory.mktemp("data")
    return out, prepare(PrepareConfig(out=str(out)))


@pytest.fixture(scope="session")
def small_builds(tmp_path_factory):
    """Two small builds with the same seed in different directories, and one with another seed."""
    dirs = [tmp_path_factory.mktemp(name) for name in ("a", "b", "other_seed")]
    for out, seed in zip(dirs, (1, 1, 2)):
        prepare(PrepareConfig(out=str(out), seed=seed, scale=SMALL))
    return dirs


def file_bytes(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def read_items(directory, task, split):
    return load_json(directory / "tasks" / task / f"{split}.json")


# ----------------------------------------------------------------------------------------------------------
# Determinism and files

def test_same_seed_same_bytes(small_builds):
    a, b, other = small_builds
    files_a, files_b = file_bytes(a), file_bytes(b)
    # meta, corpus, tokenizer and its json; 2 pretrain files; 8 finetune files; train and test of each task
    assert len(files_a) == 4 + 2 + 8 + 2 * len(tasks.TASKS)
    assert files_a == files_b
    different = [name for name, data in file_bytes(other).items() if files_a[name] != data]
    assert "corpus.txt" in different and "tasks/syn_gsm8k/test.json" in different


def test_rerun_writes_nothing(small_builds, capsys):
    a = small_builds[0]
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    prepare(PrepareConfig(out=str(a), seed=1, scale=SMALL))
    assert "all unchanged" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}


def test_ensure_reuses_a_matching_build(small_builds, monkeypatch):
    a = small_builds[0]
    monkeypatch.setattr("data.prepare.prepare", lambda config: pytest.fail("rebuilt a build that was there"))
    meta = ensure(a, seed=1, scale=SMALL)
    assert meta == json.loads((a / "meta.json").read_text())


def test_meta_contract(built):
    out, meta = built
    assert meta["tasks"] == meta["math_tasks"] + meta["commonsense_tasks"] == tasks.TASKS
    assert meta["math_tasks"] == ["syn_addsub", "syn_singleeq", "syn_multiarith", "syn_gsm8k", "syn_aqua",
                                  "syn_svamp"]
    assert meta["commonsense_tasks"] == ["syn_boolq", "syn_piqa", "syn_arc_e", "syn_arc_c", "syn_obqa"]
    enc = tokenizer.load_tokenizer(out)
    assert meta["vocab_size"] == enc.n_vocab and meta["eot_token"] == enc.eot_token == enc.n_vocab - 1
    assert meta["tokenizer"] == "tokenizer.tiktoken" and meta["train_on_inputs"] is False and meta["seed"] == 0
    assert json.loads((out / "meta.json").read_text()) == meta


def test_sizes_as_documented(built):
    out, meta = built
    # the documented defaults, at scale 1
    assert meta["sizes"] == {**{task: {"train": 500, "val": 25, "test": 150} for task in tasks.MATH_TASKS},
                             **{task: {"train": 1000, "val": 50, "test": 150} for task in tasks.COMMONSENSE_TASKS}}
    for task in tasks.TASKS:
        assert len(read_items(out, task, "train")) == meta["sizes"][task]["train"]
        assert len(read_items(out, task, "test")) == meta["sizes"][task]["test"]
    for split, key in (("train", lambda s: s["train"] - s["val"]), ("val", lambda s: s["val"])):
        idx = np.fromfile(out / f"finetune_{split}_idx.bin", dtype=np.int64)
        task_of = np.fromfile(out / f"finetune_{split}_task.bin", dtype=np.uint8)
        counts = np.bincount(task_of, minlength=len(tasks.TASKS))
        assert counts.tolist() == [key(meta["sizes"][task]) for task in tasks.TASKS]
        assert len(idx) == len(task_of) + 1


def test_pretrain_files_hold_the_corpus(built):
    out, meta = built
    enc = tokenizer.load_tokenizer(out)
    docs = (out / "corpus.txt").read_text().rstrip("\n").split("\n\n")
    ids = np.concatenate([np.memmap(out / f"pretrain_{split}.bin", dtype=np.uint16, mode="r")
                          for split in ("train", "val")])
    assert ids[-1] == meta["eot_token"] and (ids == meta["eot_token"]).sum() == len(docs)
    decoded = enc.decode(ids.tolist()).split(tokenizer.EOT)[:-1]
    assert decoded == docs


def test_finetune_files_and_loss_mask(built):
    """Each example is prompt + output + eot, and the mask marks exactly output + eot."""
    out, meta = built
    enc = tokenizer.load_tokenizer(out)
    for split in ("train", "val"):
        tokens = np.memmap(out / f"finetune_{split}.bin", dtype=np.uint16, mode="r")
        mask = np.memmap(out / f"finetune_{split}_mask.bin", dtype=np.uint8, mode="r")
        idx = np.fromfile(out / f"finetune_{split}_idx.bin", dtype=np.int64)
        task_of = np.fromfile(out / f"finetune_{split}_task.bin", dtype=np.uint8)
        assert len(tokens) == len(mask) == idx[-1] and idx[0] == 0 and np.all(np.diff(idx) > 0)
        expected = {}
        for t, task in enumerate(meta["tasks"]):
            items = read_items(out, task, "train")
            n_val = meta["sizes"][task]["val"]
            for item in (items[:-n_val] if split == "train" else items[-n_val:]):
                expected[(t, prompt(item["instruction"], item["input"]), item["output"] + tokenizer.EOT)] = True
        seen = []
        for i in range(len(idx) - 1):
            ids, m = tokens[idx[i]:idx[i + 1]], mask[idx[i]:idx[i + 1]]
            n_prompt = int((m == 0).sum())
            # the mask is 0...0 1...1: the prompt, then the response
            assert m[:n_prompt].sum() == 0 and m[n_prompt:].all()
            seen.append((int(task_of[i]), enc.decode(ids[:n_prompt].tolist()), enc.decode(ids[n_prompt:].tolist())))
        assert sorted(seen) == sorted(expected)
    # shuffled across tasks: the first examples are not all one task
    assert len(set(np.fromfile(out / "finetune_train_task.bin", dtype=np.uint8)[:50].tolist())) > 5


def test_train_on_inputs_masks_everything(tmp_path):
    meta = prepare(PrepareConfig(out=str(tmp_path), seed=1, scale=SMALL, train_on_inputs=True))
    assert meta["train_on_inputs"] is True
    for split in ("train", "val"):
        assert np.fromfile(tmp_path / f"finetune_{split}_mask.bin", dtype=np.uint8).all()


def test_options_parse_through_cli():
    argv = ["--out=x", "--seed=3", "--train_on_inputs=1", "--scale=0.5", "--tokenizer=gpt2"]
    config = cli.parse(PrepareConfig, argv)
    assert config == PrepareConfig(out="x", seed=3, train_on_inputs=True, scale=0.5, tokenizer="gpt2")
    assert cli.parse(PrepareConfig, ["--train_on_inputs=false"]).train_on_inputs is False


@pytest.mark.parametrize("argv,words", [
    (["--sead=3"], "unknown setting 'sead'.*valid settings: out, seed, train_on_inputs, scale, vocab_size"),
    (["--seed=three"], "'seed' .*expects int, got 'three'"),
    (["--vocab_size=4096.5"], "'vocab_size' .*expects int, got '4096.5'"),
    (["--train_on_inputs=maybe"], "'train_on_inputs' .*expects bool, got 'maybe'"),
    (["--seed"], "expected --key=value"),
    (["seed=3"], "expected a preset file"),
])
def test_bad_options_are_config_errors(argv, words):
    with pytest.raises(cli.ConfigError, match=words):
        cli.parse(PrepareConfig, argv)


@pytest.mark.parametrize("argv,words", [
    (["--bogus=1"], "error: unknown setting 'bogus'"),
    # prepare's own check, after the corpus and the tasks are made (a tiny build: a second)
    (["--tokenizer=wordpiece", "--scale=0.01"], "error: --tokenizer takes bpe or a tokenizer to load: tokenizer 'wordpiece': expected"),
])
def test_script_reports_bad_options_in_one_line(tmp_path, argv, words):
    cmd = [sys.executable, "-m", "data.prepare", f"--out={tmp_path / 'data'}", *argv]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(words) and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "data").exists()


def test_script_help_lists_the_options():
    result = subprocess.run([sys.executable, "-m", "data.prepare", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for field in dataclasses.fields(PrepareConfig):
        assert f"--{field.name}=" in result.stdout


# ----------------------------------------------------------------------------------------------------------
# The suite

@pytest.fixture(scope="module")
def suite():
    return tasks.make_tasks(seed=0)


def test_train_and_test_disjoint(built):
    out, meta = built
    for task in tasks.TASKS:
        train = {(i["instruction"], i["input"]) for i in read_items(out, task, "train")}
        test = {(i["instruction"], i["input"]) for i in read_items(out, task, "test")}
        assert len(train) == meta["sizes"][task]["train"] and len(test) == 150 and not train & test, task


def test_every_answer_is_what_its_output_scores(suite):
    for task, (train, test) in suite.items():
        for item in train + test:
            assert is_correct(task, item["output"], item["answer"]), (task, item)
            # and the scoring can say no: a different answer is not accepted
            assert not is_correct(task, item["output"], wrong_answer(task, item["answer"])), (task, item)


def wrong_answer(task, answer):
    if task == "syn_aqua":
        return "A" if answer != "A" else "B"
    if task in tasks.MATH_TASKS:
        return str(int(answer) + 1)
    return {"true": "false", "false": "true", "solution1": "solution2", "solution2": "solution1",
            "answer1": "answer2"}.get(answer, "answer1")


STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_math_outputs_are_table_steps(suite):
    for task in tasks.MATH_TASKS:
        for item in suite[task][0] + suite[task][1]:
            steps = STEP.findall(item["output"])
            assert steps, item
            for a, op, b, c in steps:
                a, b, c = int(a), int(b), int(c)
                assert world.is_table_fact(a, op, b) and world.apply(a, op, b) == c, item
            last = steps[-1][3]
            ending = f"The answer is ({item['answer']})." if task == "syn_aqua" else f"The answer is {last}."
            assert item["output"].endswith(ending), item
            if task == "syn_aqua":
                assert f"({item['answer']}) {last} " in item["instruction"] + " ", item
            assert item["input"] == ""


def test_commonsense_outputs_and_labels(suite):
    labels = {"syn_boolq": ["true", "false"], "syn_piqa": ["solution1", "solution2"]}
    for task in tasks.COMMONSENSE_TASKS:
        allowed = labels.get(task, ["answer1", "answer2", "answer3", "answer4"])
        train, test = suite[task]
        for item in train + test:
            assert item["answer"] in allowed
            assert item["output"].endswith(f", so the correct answer is {item['answer']}")
            # the rationale names no label, so the scorer's first match is the final one
            rationale = item["output"][:-len(f"the correct answer is {item['answer']}")]
            assert not re.search("|".join(allowed), rationale), item
            assert item["instruction"].endswith("Answer format: " + "/".join(allowed))
            assert bool(item["input"]) == (task == "syn_boolq")
        # no label is rare: always guessing one would stay near chance
        counts = [sum(item["answer"] == label for item in train) for label in allowed]
        assert min(counts) > 0.6 * len(train) / len(allowed), (task, counts)


def test_rationales_number_the_options_and_look_the_answer_up(suite):
    """ "1: parrot, the parrot is a bird 1\n2: bee, the bee is an insect 2 ... an insect 2, so the correct answer
    is answer2": every option on a line of its own, in order, copied as the prompt writes it after its number and
    followed by the fact and the number again; then the value looked for with the number of the one option
    whose line ends with it, and that number is the label's."""
    for task in ("syn_piqa", "syn_arc_e", "syn_arc_c", "syn_obqa"):
        for item in suite[task][0]:
            options = re.findall(r"(?:Answer|Solution)\d: (.*)", item["instruction"])
            k = int(item["answer"][-1])
            rationale = item["output"].removesuffix(f", so the correct answer is {item['answer']}")
            body, lookup = rationale.rsplit(". ", 1)
            lines = body.split("\n")
            lines = lines[-len(options):]  # after the fact, when one comes first
            assert len(lines) == len(options) and all(":" not in line for line in body.split("\n")[:-len(options)])
            for i, (line, option) in enumerate(zip(lines, options), 1):
                assert line.startswith(f"{i}: {option}") and line.endswith(f" {i}"), item
            target, number = lookup.rsplit(" ", 1)
            assert number == str(k), item
            ends = [i for i, line in enumerate(lines, 1) if line.removesuffix(f" {i}").endswith(target)]
            assert ends == [k], item
    facts = {"eat": world.fact_food, "have": world.fact_legs, "a": world.fact_kind, "an": world.fact_kind,
             "live in the": world.fact_home}
    for item in suite["syn_boolq"][0]:
        first, fact, again, verdict = re.fullmatch(r"the question asked (\w+)\. (.*), asked (\w+) (yes|no), so the "
                                                   r"correct answer is (?:true|false)", item["output"]).groups()
        name, verb, value = re.search(r"question: (?:does|is) the (.+?) (eat|have|a|an|live in the) (\w+)",
                                      item["instruction"]).groups()
        assert first == again == value, item  # the asked value, copied from the question
        assert fact == facts[verb](name), item  # the fact the question is about, in the corpus's words
        told = fact.removesuffix(" legs").split()[-1]
        assert told in item["input"].replace("no legs", "0 legs"), item  # the passage says it
        assert (verdict == "yes") == (told == value) == (item["answer"] == "true"), item
    for item in suite["syn_aqua"][0]:
        choices = re.findall(r"\(([A-E])\) (\d+)", item["instruction"])
        read = "\n".join(f"{i}: {value} {i}" for i, (_, value) in enumerate(choices, 1))
        value, number = dict(choices)[item["answer"]], "ABCDE".index(item["answer"]) + 1
        assert item["output"].endswith(f".\n{read}. {value} {number}. The answer is ({item['answer']})."), item


def test_bare_outputs_without_rationales():
    for task in tasks.COMMONSENSE_TASKS:
        train, test = tasks.make_task(task, 0, 30, 5, rationales=False)
        with_rationales = tasks.make_task(task, 0, 30, 5)
        for item, full in zip(train + test, with_rationales[0] + with_rationales[1]):
            assert item["output"] == f"the correct answer is {item['answer']}"
            assert full["output"].endswith(item["output"]) and full["instruction"] == item["instruction"]


def which_predicates():
    """{"Which of these <noun> <phrase>?": the test an option must pass}, from the world's tables."""
    predicates = {"Which of these animals can fly?": lambda n: world.ANIMAL[n]["flies"],
                  "Which of these animals cannot fly?": lambda n: not world.ANIMAL[n]["flies"]}
    for prop, (has, has_not) in world.MATERIAL_PROPERTIES.items():
        predicates[f"Which of these objects {has}?"] = lambda o, p=prop: world.object_has(o, p)
        predicates[f"Which of these materials {has}?"] = lambda m, p=prop: world.material_has(m, p)
        predicates[f"Which of these materials {has_not}?"] = lambda m, p=prop: not world.material_has(m, p)
    for trait, (has, _, _) in world.KIND_TRAITS.items():
        predicates[f"Which of these animals {has}?"] = lambda n, t=trait: world.animal_has_trait(n, t)
    for prop, (_, lives) in world.PLACE_PROPERTIES.items():
        predicates[f"Which of these animals {lives}?"] = lambda n, p=prop: world.animal_lives_where(n, p)
    for kind in world.KIND_PLURALS:
        predicates[f"Which of these animals is {world.with_article(kind)}?"] = \
            lambda n, k=kind: world.ANIMAL[n]["kind"] == k
    for name, animal in world.ANIMAL.items():
        predicates[f"Which of these animals has more legs than the {name}?"] = \
            lambda n, legs=animal["legs"]: world.ANIMAL[n]["legs"] > legs
    return predicates


def test_four_way_items_have_exactly_one_right_option(suite):
    """Options are distinct, and for the "Which of these ..." questions the world's tables say that the
    labelled option, and no other, passes."""
    predicates = which_predicates()
    checked = 0
    for task in ("syn_arc_e", "syn_arc_c", "syn_obqa"):
        for item in suite[task][0] + suite[task][1]:
            options = re.findall(r"Answer\d: (.*)", item["instruction"])
            assert len(options) == 4 == len(set(options)), item
            question = re.search(r"question: (.*\?)", item["instruction"]).group(1)
            if question in predicates:
                passing = [i for i, option in enumerate(options, 1) if predicates[question](option)]
                assert passing == [int(item["answer"][-1])], item
                checked += 1
    assert checked > 1500  # most four-way items are of this kind


def test_prompt_and_output_tokenize_apart_as_together(built):
    """The .bin files encode prompt and output separately; that is the same as encoding the whole text."""
    out, meta = built
    enc = tokenizer.load_tokenizer(out)
    for task in meta["tasks"]:
        for item in read_items(out, task, "train")[:200]:
            head = prompt(item["instruction"], item["input"])
            assert enc.encode_ordinary(head + item["output"]) == \
                enc.encode_ordinary(head) + enc.encode_ordinary(item["output"]), item


# What the corpus may never hold: the prompt template, the answer formats, the label words
TASK_FORMATS = ("Below is an instruction", "appropriately completes the request", "### Instruction:",
                "### Input:", "### Response:", "Answer format", "Answer Choices", "answer is", "Please choose",
                "Please answer", "question says")
LABEL = re.compile(r"(?:answer|solution|ending|option)\d", re.IGNORECASE)
QUESTION = re.compile(r"[^.?!:\n]+\?")  # a question, from the last sentence break or colon


def test_corpus_never_uses_the_task_formats(built, suite):
    out, _ = built
    text = (out / "corpus.txt").read_text()
    for marker in TASK_FORMATS:
        assert marker not in text, marker
    assert not LABEL.search(text)
    # none of the tasks' questions, not even at the end of a longer one
    asked = {q.strip() for train, test in suite.values() for item in train + test
             for q in QUESTION.findall(item["instruction"])}
    corpus_questions = [q.strip() for q in QUESTION.findall(text)]
    assert len(corpus_questions) > 500  # people do ask, in their own words
    for question in corpus_questions:
        words = question.split(" ")
        assert not any(" ".join(words[i:]) in asked for i in range(len(words))), question
    for task, (_, test) in suite.items():
        for item in test:
            assert item["instruction"] not in text
            assert not item["input"] or item["input"] not in text


def test_numbered_documents_restate_their_list_and_look_entries_up():
    """ "Shelf1: owl\nShelf2: cow\n1: owl, the owl eats mice 1\n2: cow, ... 2. grass 2. mice 1.": each keyed
    entry again on its line, in order, between its number twice; each lookup's number is that of a line
    ending with the words looked up."""
    rng = random.Random(0)
    for _ in range(300):
        doc = corpus.numbered_doc(rng)
        keyed = re.findall(r"^[A-Z][a-z]+(\d+): (.*)$", doc, re.M)
        last = doc.rindex("\n")
        lines = doc[:last].split("\n")[1 + len(keyed):] + [doc[last + 1:].split(". ", 1)[0]]
        lookups = doc[last + 1:].split(". ", 1)[1].removesuffix(".").split(". ")
        assert len(lines) == len(keyed) >= 2, doc
        for i, ((key, subject), line) in enumerate(zip(keyed, lines), 1):
            assert key == str(i) and line.startswith(f"{i}: {subject}") and line.endswith(f" {i}"), doc
        for lookup in lookups:
            words, number = lookup.rsplit(" ", 1)
            assert lines[int(number) - 1].removesuffix(f" {number}").endswith(words), doc


def test_echo_documents_write_one_run_three_times():
    rng = random.Random(0)
    for _ in range(300):
        heading, body = corpus.echo_doc(rng).split(": ", 1)
        runs = body.removesuffix(".").split(".\n")
        assert heading in corpus.ECHO_HEADINGS and len(runs) == 3 and runs[0] == runs[1] == runs[2]


def test_same_or_not_documents_compare_values_of_one_kind():
    """Each line of a same-or-not document compares two values of one list, and says yes exactly when they are
    the same; both verdicts are common."""
    rng = random.Random(0)
    verdicts = []
    for _ in range(300):
        heading, body = corpus.same_doc(rng).split(": ", 1)
        assert heading in corpus.SAME_HEADINGS
        for line in body.removesuffix(".").split(". "):
            told, asked, verdict = re.fullmatch(r"(\w+), asked (\w+) (yes|no)", line).groups()
            assert any(told in values and asked in values for values in corpus.SAME_VALUES), line
            assert (verdict == "yes") == (told == asked), line
            verdicts.append(verdict)
    assert 0.4 < verdicts.count("yes") / len(verdicts) < 0.6


def test_corpus_covers_every_token_of_the_suite(built):
    """Each token of the fine-tuning files occurs MIN_CORPUS_COUNT times in pretrain_train, and meta says so."""
    out, meta = built
    assert meta["tokens_missing_from_corpus"] == []
    corpus_counts = np.bincount(np.memmap(out / "pretrain_train.bin", dtype=np.uint16, mode="r"),
                                minlength=meta["vocab_size"])
    for split in ("train", "val"):
        used = np.unique(np.memmap(out / f"finetune_{split}.bin", dtype=np.uint16, mode="r"))
        assert corpus_counts[used].min() >= MIN_CORPUS_COUNT


def test_corpus_sums_are_table_facts():
    docs = corpus.make_corpus(seed=0)
    equations = [eq for doc in docs for eq in STEP.findall(doc)]
    assert len(equations) > 20000
    for a, op, b, c in equations:
        assert world.is_table_fact(int(a), op, int(b)) and world.apply(int(a), op, int(b)) == int(c)


def test_corpus_writes_out_the_whole_table():
    lines = set("\n".join(corpus.make_corpus(seed=0)).split("\n"))
    missing = [f for f in world.table_facts() if f"{f[0]} {f[1]} {f[2]} = {world.apply(*f)}" not in lines]
    assert not missing


def test_different_seeds_differ():
    assert corpus.make_corpus(1, SMALL) != corpus.make_corpus(2, SMALL)
    assert tasks.make_task("syn_boolq", 1, 20, 5) != tasks.make_task("syn_boolq", 2, 20, 5)


# ----------------------------------------------------------------------------------------------------------
# Tokenizer

def test_bpe_expected_merges():
    # "hello" x3: pairs el, he, ll, lo all count 3; ties go to the smaller ids: e(101)+l(108) first
    assert tokenizer.train_bpe(tokenizer.count_words(["hello hello hello"]), 1000)[256:] == \
        [b"el", b"hel", b"lo", b"hello", b" hello"]
    # pieces "ab", " ab" x2, " abc": ab (4) then " ab" (3); (" ab", c) occurs once and is not merged
    assert tokenizer.train_bpe(tokenizer.count_words(["ab ab ab abc"]), 1000)[256:] == [b"ab", b" ab"]
    # the size limit: 256 bytes + 1 merge
    assert tokenizer.train_bpe(tokenizer.count_words(["ab ab ab abc"]), 257)[256:] == [b"ab"]


def test_bpe_encoding_uses_the_merges():
    vocab = tokenizer.train_bpe(tokenizer.count_words(["hello hello hello"]), 1000)
    enc = tokenizer.make_encoding("tiny", vocab)
    assert enc.encode_ordinary("hello hello") == [vocab.index(b"hello"), vocab.index(b" hello")]
    assert enc.eot_token == len(vocab) == enc.n_vocab - 1


UNICODE = [
    "", " ", "\n\n\t  ", "plain ascii, with punctuation!?",
    "emoji 🦉🐍👩‍👩‍👧 and flags 🇫🇷",
    "CJK 猫头鹰住在森林里。ひらがな カタカナ 한국어",
    "control \x00\x01\x07\x1b[0m\x7f chars",
    "combining é vs é, Ωmega, ﬁ ligature",
    "mixed 12,345.67 ½ ², \u200b\ufeff",
    "<|endoftext|> as plain text", "RTL עברית العربية",
]


def test_roundtrip(built):
    out, _ = built
    enc = tokenizer.load_tokenizer(out)
    text = (out / "corpus.txt").read_text()
    assert enc.decode(enc.encode_ordinary(text)) == text
    for s in UNICODE:
        assert enc.decode(enc.encode_ordinary(s)) == s, s
        assert enc.decode_bytes(enc.encode_ordinary(s)) == s.encode("utf-8")


def test_saved_tokenizer_reloads_to_identical_ids(built, suite, monkeypatch):
    out, meta = built
    trained, _ = build_tokenizer(PrepareConfig(), corpus.make_corpus(seed=0), suite)  # in memory, as prepare had it
    sample = (out / "corpus.txt").read_text() + "".join(UNICODE)
    for loaded in (tokenizer.load_tokenizer(out), tokenizer.load_tokenizer(out / "tokenizer.tiktoken")):
        assert loaded.encode_ordinary(sample) == trained.encode_ordinary(sample)
        assert (loaded.name, loaded.n_vocab) == (trained.name, trained.n_vocab) == \
            (f"moelora-bpe-{meta['vocab_size']}", meta["vocab_size"])
    # the file is tiktoken's format: tiktoken's own reader (its cache turned off) reads the same ranks
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ranks = tiktoken.load.load_tiktoken_bpe(str(out / "tokenizer.tiktoken"))
    assert ranks == tokenizer.read_tiktoken_file(out / "tokenizer.tiktoken")
    assert sorted(ranks.values()) == list(range(meta["vocab_size"] - 1))


def test_load_tokenizer_from_a_bare_tiktoken_file(tmp_path):
    """A .tiktoken file with no side file: GPT-2's split pattern, <|endoftext|> after the last token."""
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(tokenizer.tiktoken_file_bytes([bytes([b]) for b in range(256)] + [b"ow", b" ow", b" owl"]))
    enc = tokenizer.load_tokenizer(path)
    assert enc.name == "tiny" and enc.eot_token == 259 and enc.n_vocab == 260
    assert enc.encode_ordinary("owl owl") == [256, ord("l"), 258]
    assert enc.encode(tokenizer.EOT, allowed_special="all") == [259]


def test_bad_tiktoken_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(b"YQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match="line 2"):
        tokenizer.load_tokenizer(path)


def test_get_encoding_failure_says_how_to_fix(monkeypatch):
    def offline(name):
        raise ConnectionError("no internet")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR"):
        tokenizer.get_encoding("gpt2")
    with pytest.raises(ValueError, match="gpt2"):
        tokenizer.get_encoding("no-such-encoding")


# ----------------------------------------------------------------------------------------------------------
# The LLM-Adapters format

def test_prompt_template():
    assert prompt("Add 2 and 3.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert prompt("Add them.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd them.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n")
    assert prompt("Add 2 and 3.", None) == prompt("Add 2 and 3.", "") == prompt("Add 2 and 3.")


SCORING = [
    # math: the last number, commas dropped, within 1e-3
    ("gsm8k", "The answer is 42.", "42", True),
    ("gsm8k", "The answer is 41.", "42", False),
    ("gsm8k", "6 * 7 = 42. Then 42 - 2 = 40.", "42", False),
    ("gsm8k", "6 * 7 = 40 + 2 = 42", "42", True),
    ("gsm8k", "The answer is 1,234.", "1234", True),
    ("gsm8k", "The answer is 1,234.", "1", False),
    ("AddSub", "The answer is 12.0004", "12", True),
    ("AddSub", "The answer is 12.002", "12", False),
    ("SVAMP", "I do not know.", "0", False),
    ("SingleEq", "x = -5", "-5", True),
    ("MultiArith", "The answer is 7", 7.0, True),
    ("mawps", "The answer is 18", ["18"], True),
    ("syn_gsm8k", "3 + 4 = 7.\nThe answer is 7.", "7", True),
    ("syn_addsub", "The answer is 70.", "7", False),
    # AQuA: the first capital A-E anywhere
    ("AQuA", "The answer is (C).", "C", True),
    ("AQuA", "Because 3 + 4 = 7, the answer is (C).", "C", False),
    ("AQuA", "the answer is c", "C", False),
    ("syn_aqua", "3 + 4 = 7. The answer is (D).", "D", True),
    # commonsense: the first match of the label set, compared exactly
    ("boolq", "the correct answer is true", "true", True),
    ("boolq", "the correct answer is false", "true", False),
    ("boolq", "True", "true", False),
    ("boolq", "that is untrue", "true", True),
    ("boolq", "false, not true", "true", False),
    ("piqa", "the correct answer is solution2", "solution2", True),
    ("piqa", "solution 2", "solution2", False),
    ("ARC-Challenge", "the correct answer is answer12", "answer1", True),
    ("ARC-Easy", "the correct answer is answer12", "answer2", False),
    ("openbookqa", "answer3 or answer4", "answer4", False),
    ("social_i_qa", "the correct answer is answer5", "answer5", True),
    ("hellaswag", "the correct answer is ending3", "ending3", True),
    ("winogrande", "the correct answer is option2", "option1", False),
    ("syn_arc_c", "the correct answer is answer4", "answer4", True),
    ("syn_obqa", "no label here", "answer4", False),
    # names ignore case
    ("GSM8K", "The answer is 3.", "3", True),
    ("arc-easy", "answer2", "answer2", True),
]


@pytest.mark.parametrize("dataset, output, answer, expected", SCORING)
def test_scoring(dataset, output, answer, expected):
    assert is_correct(dataset, output, answer) is expected


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="AddSub.*winogrande.*syn_obqa"):
        is_correct("MATH", "1", "1")


def test_every_task_has_a_stand_in():
    assert set(STAND_INS) == set(tasks.TASKS)


GOOD_ITEMS = [
    {"instruction": "What is 2 + 3?", "input": "", "output": "2 + 3 = 5. The answer is 5.", "answer": "5"},
    {"instruction": "q", "input": "a passage", "output": "the correct answer is true", "answer": "true"},
    {"instruction": "q", "input": "", "output": "", "answer": 18.0},
    {"instruction": "q", "input": "", "output": "", "answer": ["C"], "extra": "kept"},
]


def test_load_json_reads_the_format(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(GOOD_ITEMS))
    assert load_json(path) == GOOD_ITEMS
    assert load_json(str(path)) == GOOD_ITEMS


def item_with(**fields):
    return json.dumps([{"instruction": "q", "input": "", "output": "", "answer": "1", **fields}])


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": ', r"not a valid JSON file"),
    ('{"instruction": "q"}', r"expected a JSON list of items, found a dict"),
    (json.dumps(GOOD_ITEMS[:1] + ["just text"]), r"item 1: expected an object"),
    (json.dumps(GOOD_ITEMS[:2] + [{"instruction": "q", "input": "", "output": ""}]),
     r"item 2: missing field\(s\) answer"),
    (item_with(instruction=3), r"item 0: field 'instruction' should"),
    (json.dumps(GOOD_ITEMS + json.loads(item_with(input=None))), r"item 4: field 'input'"),
    (item_with(answer=True), r"item 0: field 'answer'"),
    (item_with(answer=[]), r"item 0: field 'answer'"),
    (item_with(answer={"x": 1}), r"item 0: field 'answer'"),
])
def test_load_json_rejects_malformed_files(tmp_path, content, message):
    """Each bad file names itself and, for a bad item, the item's index."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_json(path)
    assert str(path) in str(error.value)
