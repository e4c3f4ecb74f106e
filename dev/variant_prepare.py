"""Build the data with a rationale variant patched in, for a GPU sweep that compares variants side by side.

    python -m dev.variant_prepare --variants=yes --out=out/data_yes [prepare's other options]

Variants (the checked-in format is "lines": each option on a line, "2: bee, the bee is an insect 2", then the
target looked up, ". an insect 2"; syn_aqua's choices the same way, "3: 12 3 ... 12 3. The answer is (C).",
which sweeps 15 and 19 tested as a variant):
    yes   each line ends with a verdict, "yes" for the right option only, and the lookup copies the number
          after the one "yes": "2: bee, the bee is an insect yes 2 ... yes 2"; the corpus's numbered lists
          say what they look for first ("Looking for grass:") and mark their lines the same way.
    arithN  corpus.ARITHMETIC_PASSES = N
    listsN  corpus.LIST_DOCS = N
    wordsA-B  echo runs of A to B words (corpus.ECHO_WORDS)
    echoN   corpus.ECHO_DOCS = N (sweeps 12-16 ran before the corpus had echo documents of its own, with
            runs of 5-15 words, later 3-8, numbers up to 20, later up to 100: what corpus.echo_doc does now)
    numruns  half the echo runs numbers only
    more  twice the numbered documents (corpus.NUMBERED_DOCS), the rest as checked in
    (sweeps 20-23 tried syn_boolq's "same or not" verdicts here as variants "same", "sameA" and "samedocsN";
    "sameA" with 3,000 documents and 20,000 echo documents is what data/ does now)
"""
import dataclasses
import re

import cli
from data import prepare
from data.synthetic import commonsense_tasks, corpus, math_tasks, tasks, world


@dataclasses.dataclass
class VariantConfig(prepare.PrepareConfig):
    variants: str = ""  # comma-separated, several at once: "echo8000,arith15"


def read_options_yes(options, right, target, describe=None, fact=None):
    lines = [f"{i}: {world.named_with_fact(o, describe(o)) if describe else o} {'yes' if o == right else 'no'} {i}"
             for i, o in enumerate(options, 1)]
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
    entries, values, unique = corpus.numbered_entries(rng)
    k = rng.choice(unique)
    key = rng.choice(corpus.LIST_KEYS)
    keyed = "\n".join(f"{key}{i}: {s}" for i, (s, _, _) in enumerate(entries, 1))
    lines = [f"{i}: {world.named_with_fact(subject, fact)} {'yes' if i == k + 1 else 'no'} {i}"
             for i, (subject, fact, _) in enumerate(entries, 1)]
    return f"Looking for {values[k]}:\n{keyed}\n" + "\n".join(lines) + f". yes {k + 1}."


def echo_doc_numbers_half(rng):
    """Half the echo runs numbers alone (up to corpus.MAX_NUMBER), the other half corpus.echo_doc's."""
    if rng.random() < 0.5:
        return ECHO_DOC(rng)
    run = " ".join(str(n) for n in rng.sample(range(corpus.MAX_NUMBER + 1), rng.randint(*corpus.ECHO_WORDS)))
    return f"{rng.choice(corpus.ECHO_HEADINGS)}: " + ".\n".join([run] * 3) + "."


ECHO_DOC = corpus.echo_doc


def main(argv=None):
    cfg = cli.parse(VariantConfig, argv)
    for variant in cfg.variants.split(","):
        if variant == "yes":
            commonsense_tasks.read_options = read_options_yes
            tasks.GENERATORS["syn_aqua"] = aqua_yes(math_tasks.syn_aqua)
            corpus.numbered_doc = numbered_doc_yes
        elif variant.startswith("echo"):
            corpus.ECHO_DOCS = int(variant[4:])
        elif variant.startswith("lists"):
            corpus.LIST_DOCS = int(variant[5:])
        elif variant.startswith("words"):  # "words2-5": echo runs of 2 to 5 words
            corpus.ECHO_WORDS = tuple(int(n) for n in variant[5:].split("-"))
        elif variant.startswith("arith"):
            corpus.ARITHMETIC_PASSES = int(variant[5:])
        elif variant == "numruns":
            corpus.echo_doc = echo_doc_numbers_half
        elif variant == "more":
            corpus.NUMBERED_DOCS *= 2
        else:
            raise SystemExit(f"unknown variant {variant!r}")
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(prepare.PrepareConfig)}
    prepare.prepare(prepare.PrepareConfig(**options))


if __name__ == "__main__":
    main()
