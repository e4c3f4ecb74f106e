"""The LLM-Adapters data format: reading the files, the prompt template, the scoring rules.

LLM-Adapters (Hu et al. 2023, github.com/AGI-Edgerunners/LLM-Adapters) is where the MoELoRA paper takes its
fine-tuning data (math_10k.json, commonsense_170k.json) and its test sets (dataset/<Task>/test.json). Every file
is a JSON list of items

    {"instruction": "...", "input": "...", "output": "...", "answer": "..."}

The model sees prompt(instruction, input) and learns to continue it with output; at test time its generated
text is scored against answer by is_correct(dataset, output, answer), which follows LLM-Adapters' evaluation
scripts (evaluate.py for math, commonsense_evaluate.py for commonsense):

    math (AddSub, MultiArith, SingleEq, gsm8k, SVAMP, mawps): drop commas, take the LAST number in the output,
        correct when within 1e-3 of the answer; an output with no number is wrong.
    AQuA: the FIRST of the capital letters A-E anywhere in the output, compared with the answer letter.
    commonsense: the FIRST match of the task's label set (boolq: true|false, piqa: solution1|solution2,
        ARC-*/openbookqa/social_i_qa: answer1..answer5, hellaswag: ending1..ending4, winogrande: option1|option2),
        compared exactly with the answer. The match is a plain regex search, so a label inside a longer word
        counts, as it does there: "answer12" reads as answer1, "untrue" as true.

The bundled synthetic tasks (data/synthetic/tasks.py) score exactly as the data set each stands in for
(STAND_INS). The result tables' task order and column names (MATH_ORDER, COMMONSENSE_ORDER, table_name) and
LLM-Adapters' decoding lengths (MAX_NEW_TOKENS) are at the end; data/prepare_llm_adapters.py turns their files
into a data directory that train.py and evaluate.py read.

Use:
    from data.llm_adapters import load_json, prompt, is_correct
    items = load_json("dataset/gsm8k/test.json")
    text = prompt(items[0]["instruction"], items[0]["input"])
    is_correct("gsm8k", "6 * 7 = 42. The answer is 42.", items[0]["answer"])
"""

import json
import math
import re
from pathlib import Path

# The Alpaca prompt template, as LLM-Adapters' finetune.py and evaluate scripts write it. Their source files
# indent the lines after the first (a side effect of an indented triple-quoted string); we keep the wording
# and the blank lines and drop that accidental indentation.
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n"
    "### Response:\n"
)


def prompt(instruction, input=""):
    """The text the model continues: the template with the instruction (and the input, when there is one)."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# ----------------------------------------------------------------------------------------------------------
# Reading the files

FIELDS = ("instruction", "input", "output", "answer")


def load_json(path, require_answer=True):
    """Read an LLM-Adapters file (a JSON list of items) and check every item; a bad file raises ValueError
    naming the file and, for a bad item, its index. Training files need no "answer" (LLM-Adapters' finetune.py
    reads instruction, input and output only): require_answer=False neither needs nor checks one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items, found a {type(data).__name__}")
    for index, item in enumerate(data):
        problem = item_problem(item, require_answer)
        if problem:
            raise ValueError(f"{path}: item {index}: {problem}")
    return data


def item_problem(item, require_answer=True):
    """What is wrong with one item, or "" when nothing is."""
    if not isinstance(item, dict):
        return f"expected an object with fields {', '.join(FIELDS)}, found a {type(item).__name__}"
    missing = [field for field in FIELDS if field not in item and (require_answer or field != "answer")]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for field in ("instruction", "input", "output"):
        if not isinstance(item[field], str):
            return f"field {field!r} should be a string, found a {type(item[field]).__name__}"
    if not require_answer:  # a training item: its answer, if any, is never read
        return ""
    # Answers are strings ("42", "B", "answer3"), numbers in some math files, and one-element lists in older
    # copies of LLM-Adapters' test files (their evaluate.py then takes answer[-1]).
    answer = item["answer"]
    values = answer if isinstance(answer, list) else [answer]
    if not values or not all(is_scalar(value) for value in values):
        return f"field 'answer' should be a string, a number or a list of them, found {answer!r}"
    return ""


def is_scalar(value):
    # bool is a subclass of int in Python, but true/false answers are written as strings in these files
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------
# Scoring

LABEL_SETS = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Challenge": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Easy": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
}
MATH_DATASETS = ("AddSub", "MultiArith", "SingleEq", "gsm8k", "SVAMP", "mawps")
CHOICE_DATASETS = ("AQuA",)

# The bundled synthetic tasks and the LLM-Adapters data set each one mirrors (and scores as).
STAND_INS = {
    "syn_addsub": "AddSub",
    "syn_singleeq": "SingleEq",
    "syn_multiarith": "MultiArith",
    "syn_gsm8k": "gsm8k",
    "syn_aqua": "AQuA",
    "syn_svamp": "SVAMP",
    "syn_boolq": "boolq",
    "syn_piqa": "piqa",
    "syn_arc_e": "ARC-Easy",
    "syn_arc_c": "ARC-Challenge",
    "syn_obqa": "openbookqa",
}
KNOWN_DATASETS = (*MATH_DATASETS, *CHOICE_DATASETS, *LABEL_SETS, *STAND_INS)

MATH_TOLERANCE = 1e-3
NUMBER = re.compile(r"-?\d+\.?\d*")
LETTER = re.compile(r"A|B|C|D|E")


def last_number(output):
    """The last number in the output, commas dropped (so 1,234 reads as 1234); inf when there is none."""
    numbers = NUMBER.findall(output.replace(",", ""))
    return float(numbers[-1]) if numbers else math.inf


def first_match(pattern, output):
    """The first match of the pattern in the output, or "" when there is none."""
    found = pattern.findall(output.strip())
    return found[0] if found else ""


def label_pattern(labels):
    """A regex matching any of the labels, as LLM-Adapters writes it: r'answer1|answer2|...'."""
    return re.compile("|".join(re.escape(label) for label in labels))


def source_dataset(dataset):
    """The LLM-Adapters data set whose rules score this one (a syn_* name maps to the one it stands in for).
    Names are matched ignoring case; an unknown name raises ValueError listing the known ones."""
    by_lower_name = {name.lower(): name for name in KNOWN_DATASETS}
    name = by_lower_name.get(str(dataset).lower())
    if name is None:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(KNOWN_DATASETS)}")
    return STAND_INS.get(name, name)


def answer_problem(dataset, answer):
    """What keeps is_correct from scoring against this answer (a math answer that is not a number, a letter
    or label outside the data set's set), or "" when nothing does."""
    dataset = source_dataset(dataset)
    value = answer[-1] if isinstance(answer, list) else answer
    if dataset in MATH_DATASETS:
        try:
            float(value)
            return ""
        except (TypeError, ValueError):
            return f"field 'answer' should be a number for {dataset}, found {answer!r}"
    labels = ("A", "B", "C", "D", "E") if dataset in CHOICE_DATASETS else LABEL_SETS[dataset]
    if value not in labels:
        return f"field 'answer' should be one of {', '.join(labels)} for {dataset}, found {answer!r}"
    return ""


def is_correct(dataset, output, answer):
    """Score one generated output against the item's answer by LLM-Adapters' rules for that data set."""
    dataset = source_dataset(dataset)
    if isinstance(answer, list):
        answer = answer[-1]
    if dataset in MATH_DATASETS:
        return abs(float(answer) - last_number(output)) <= MATH_TOLERANCE
    if dataset in CHOICE_DATASETS:
        return first_match(LETTER, output) == answer
    return first_match(label_pattern(LABEL_SETS[dataset]), output) == answer


# ----------------------------------------------------------------------------------------------------------
# The tables and the decoding lengths

# The order of the result tables: the arithmetic one as LLM-Adapters' paper and the papers fine-tuning on
# math_10k lay it out (MAWPS, added in its later version, last), the commonsense one as LLM-Adapters' README.
MATH_ORDER = ("MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps")
COMMONSENSE_ORDER = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
                     "openbookqa")
# The tables' column names where they differ from the directory names
TABLE_NAMES = {"gsm8k": "GSM8K", "mawps": "MAWPS", "boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA",
               "hellaswag": "HellaSwag", "winogrande": "WinoGrande", "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c",
               "openbookqa": "OBQA"}
# The MoELoRA paper's eleven test sets (DESIGN.md): six math, five commonsense
PAPER_TASKS = ("MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP",
               "boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa")
# How many tokens LLM-Adapters lets the model generate: evaluate.py (math, AQuA) 256, commonsense_evaluate.py 32
MAX_NEW_TOKENS = {**{task: 256 for task in MATH_ORDER}, **{task: 32 for task in COMMONSENSE_ORDER}}


def table_name(task):
    """The column a task goes by in the result tables: "GSM8K" for gsm8k; a synthetic task keeps its name."""
    return TABLE_NAMES.get(task, task)
