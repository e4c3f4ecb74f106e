"""Build the data with a rationale variant patched in, for a GPU sweep that compares variants side by side.

    python dev/variant_prepare.py yes --out=out/data_yes [prepare's other options]

Variants (the checked-in format is "lines": each option on a line, "2: bee, the bee is an insect 2", then the
target looked up, ". an insect 2"; syn_aqua's choices the same way, "3: 12 3 ... 12 3. The answer is (C).",
which sweeps 15 and 19 tested as a variant):
    yes   each line ends with a verdict, "yes" for the right option only, and the lookup copies the number
          after the one "yes": "2: bee, the bee is an insect yes 2 ... yes 2"; the corpus's numbered lists
          say what they look for first ("Looking for grass:") and mark their lines the same way.
    arithN  corpus.ARITHMETIC_PASSES = N
    listsN  corpus.LIST_DOCS = N
    wordsA-B  echo runs of A to B words (corpus.ECHO_WORDS)
    echoshortN  echoN with runs of 3 to 8 words
    num100  the corpus's echo documents with numbers up to MAX_NUMBER, not 20
    numruns  the same, and half the echo runs numbers only
    more  twice the numbered documents (corpus.NUMBERED_DOCS), the rest as checked in
    echoN N documents more, each a random run of the world's words and numbers written three times ("Say it
          again: owl 7 glass 3 cow.\nowl 7 glass 3 cow.\nowl 7 glass 3 cow."): most of their tokens can
          only be predicted by copying from the context, which is what grows induction heads
"""
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import commonsense_tasks, corpus, math_tasks, prepare, tasks  # noqa: E402


def read_options_yes(options, right, target, describe=None, fact=None):
    lines = []
    for i, option in enumerate(options, 1):
        described = describe(option) if describe else option
        if not described.startswith(option):
            described = f"{option}, {described}"
        lines.append(f"{i}: {described} {'yes' if option == right else 'no'} {i}")
    return (f"{fact}.\n" if fact else "") + "\n".join(lines) + f". yes {options.index(right) + 1}"


def aqua_yes(generate):
    def wrapped(rng):
        item = generate(rng)
        k = "ABCDE".index(item["answer"]) + 1
        out = re.sub(r"^(\d): (\d+) (\d)", lambda m: f"{m[1]}: {m[2]} {'yes' if int(m[1]) == k else 'no'} {m[3]}",
                     item["output"], flags=re.M)
        item["output"] = re.sub(r"\. \d+ (\d)\. The answer", r". yes \1. The answer", out)
        return item
    return wrapped


def numbered_doc_yes(rng):
    facts = corpus.numbered_facts(rng)
    entries = rng.sample(facts, rng.randint(2, min(5, len(facts))))
    values = [value for _, _, value in entries]
    unique = [i for i, value in enumerate(values) if values.count(value) == 1]
    if not unique:
        return numbered_doc_yes(rng)
    k = rng.choice(unique)
    key = rng.choice(corpus.LIST_KEYS)
    keyed = rng.choice(["\n", "\n\n"]).join(f"{key}{i}: {s}" for i, (s, _, _) in enumerate(entries, 1))
    lines = []
    for i, (subject, fact, _) in enumerate(entries, 1):
        said = fact if fact.startswith(subject) else f"{subject}, {fact}"
        lines.append(f"{i}: {said} {'yes' if i == k + 1 else 'no'} {i}")
    return f"Looking for {values[k]}:\n{keyed}\n" + "\n".join(lines) + f". yes {k + 1}."


ECHO_WORDS = [5, 15]  # the fewest and most words in a run


def echo_doc(rng):
    words = list(corpus.ANIMAL) + [o for o, _, _ in corpus.OBJECTS] + list(corpus.MATERIALS) + corpus.world.FOODS
    words += [str(n) for n in range(21)]
    run = " ".join(rng.sample(words, rng.randint(*ECHO_WORDS)))
    return f"{rng.choice(['Say it again', 'Copy this', 'Read it twice', 'Once more'])}: " + ".\n".join([run] * 3) + "."


def echo_doc_numbers(only_numbers_half):
    """corpus.echo_doc with every number up to corpus.MAX_NUMBER (not 20); half the runs numbers only."""
    def echo(rng):
        numbers = [str(n) for n in range(corpus.MAX_NUMBER + 1)]
        words = list(corpus.ANIMAL) + [o for o, _, _ in corpus.OBJECTS] + list(corpus.MATERIALS) + corpus.world.FOODS
        pool = numbers if only_numbers_half and rng.random() < 0.5 else words + numbers[:21] + rng.sample(numbers[21:], 20)
        run = " ".join(rng.sample(pool, rng.randint(*corpus.ECHO_WORDS)))
        return f"{rng.choice(corpus.ECHO_HEADINGS)}: " + ".\n".join([run] * 3) + "."
    return echo


def with_echo_docs(make_corpus, count):
    def wrapped(seed, scale=1.0):
        rng = random.Random(f"echo-{seed}")
        docs = make_corpus(seed, scale) + [echo_doc(rng) for _ in range(corpus.scaled(count, scale))]
        rng.shuffle(docs)
        return docs
    return wrapped


def main():
    variants, args = sys.argv[1], sys.argv[2:]
    for variant in variants.split(","):  # several at once: "echo8000,arith15"
        if variant == "yes":
            commonsense_tasks.read_options = read_options_yes
            tasks.GENERATORS["syn_aqua"] = aqua_yes(math_tasks.syn_aqua)
            corpus.numbered_doc = numbered_doc_yes
        elif variant.startswith("echoshort"):
            ECHO_WORDS[:] = [3, 8]
            prepare.make_corpus = with_echo_docs(prepare.make_corpus, int(variant[9:]))
        elif variant.startswith("echo"):
            prepare.make_corpus = with_echo_docs(prepare.make_corpus, int(variant[4:]))
        elif variant.startswith("lists"):
            corpus.LIST_DOCS = int(variant[5:])
        elif variant.startswith("words"):  # "words2-5": echo runs of 2 to 5 words
            corpus.ECHO_WORDS = tuple(int(n) for n in variant[5:].split("-"))
        elif variant.startswith("arith"):
            corpus.ARITHMETIC_PASSES = int(variant[5:])
        elif variant in ("num100", "numruns"):
            corpus.echo_doc = echo_doc_numbers(only_numbers_half=variant == "numruns")
        elif variant == "more":
            corpus.NUMBERED_DOCS *= 2
        else:
            raise SystemExit(f"unknown variant {variant!r}")
    prepare.prepare(prepare.parse_args(args))


if __name__ == "__main__":
    main()
