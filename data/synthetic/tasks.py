"""The bundled suite: eleven synthetic tasks, their sizes, and how their train and test splits are drawn.

The names say what they are: `syn_gsm8k` is a small generated stand-in for GSM8K, never the real data set.
Each task scores as the LLM-Adapters data set it mirrors (data/llm_adapters.py's STAND_INS). Generators live
in math_tasks.py and commonsense_tasks.py; this file only orders them and draws the items.

Sizes (per task, at scale 1) are the constants below; data/prepare.py's --scale multiplies them. They are sized
for the CPU demo: enough training items for adapters to learn each format in a few minutes, test sets small
and outputs short so that greedy decoding of all eleven takes a couple of minutes.

Run `python -m data.synthetic.tasks` to print one item of each task.
"""

import random

from data.synthetic import commonsense_tasks, math_tasks
from data.llm_adapters import STAND_INS

MATH_TASKS = list(math_tasks.GENERATORS)
COMMONSENSE_TASKS = list(commonsense_tasks.GENERATORS)
TASKS = MATH_TASKS + COMMONSENSE_TASKS  # the order of meta["tasks"], and of the paper's tables
GENERATORS = {**math_tasks.GENERATORS, **commonsense_tasks.GENERATORS}
assert set(TASKS) == set(STAND_INS), "every task needs a scoring rule in llm_adapters.STAND_INS"

# Items per task in tasks/<task>/train.json (finetune_val is a slice of these). Fine-tuning samples examples
# uniformly, so these sizes are also the task mix: math is learned faster than picking an option, and gets
# fewer examples.
TRAIN_SIZE = {task: 500 for task in MATH_TASKS} | {task: 1000 for task in COMMONSENSE_TASKS}
TEST_SIZE = 150  # items per task in tasks/<task>/test.json
VAL_FRACTION = 0.05  # the share of each task's training items held out as finetune_val
MAX_TRIES_PER_ITEM = 50  # how hard to look for new unique items before declaring a task too small


def sizes(scale=1.0):
    """{task: {"train": n, "val": n, "test": n}} at this scale ("val" counts items inside "train")."""
    result = {}
    for task in TASKS:
        n_train = max(2, round(TRAIN_SIZE[task] * scale))
        n_val = max(1, round(n_train * VAL_FRACTION))
        result[task] = {"train": n_train, "val": n_val, "test": max(1, round(TEST_SIZE * scale))}
    return result


def make_task(task, seed, n_train, n_test, rationales=True):
    """(train items, test items) of one task. Items are drawn until there are n_train + n_test different ones
    (an item is its instruction and input), then the first n_train are train and the rest test: the splits
    never share an item, and one task's items do not depend on another's sizes or seed stream.

    rationales=False cuts commonsense outputs down to LLM-Adapters' bare "the correct answer is <label>"."""
    rng = random.Random(f"{task}-{seed}")
    generate = GENERATORS[task]
    items, seen = [], set()
    for _ in range(MAX_TRIES_PER_ITEM * (n_train + n_test)):
        candidate = generate(rng)
        if not rationales and task in COMMONSENSE_TASKS:
            candidate["output"] = candidate["output"][candidate["output"].index("the correct answer is"):]
        key = (candidate["instruction"], candidate["input"])
        if key not in seen:
            seen.add(key)
            items.append(candidate)
            if len(items) == n_train + n_test:
                return items[:n_train], items[n_train:]
    raise RuntimeError(f"{task}: found only {len(items)} different items, {n_train + n_test} asked for")


def make_tasks(seed, scale=1.0, rationales=True):
    """{task: (train, test)} for all eleven tasks."""
    return {task: make_task(task, seed, n["train"], n["test"], rationales) for task, n in sizes(scale).items()}


if __name__ == "__main__":
    for task, (train, test) in make_tasks(seed=0, scale=0.01).items():
        print(f"== {task} (stands in for {STAND_INS[task]})")
        for field, value in train[0].items():
            print(f"{field}: {value}")
        print()
