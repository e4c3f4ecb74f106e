"""The pretraining corpus: plain documents that teach the world of world.py and its arithmetic.

Five kinds of document, each a few sentences:
    facts        profiles of an animal, an object, a material, a place or a kind of animal, every fact in
                 several wordings and orders (a model recalls a fact far better after reading it phrased many
                 ways), some with the next link of a chain beside it ("The nail is made of iron. Iron is pulled
                 by a magnet.")
    arithmetic   lines "7 + 5 = 12", the whole table of world.py written ARITHMETIC_PASSES times, shuffled
    comparisons  "9 is more than 4.", "The spider has more legs than the ant."
    narratives   short stories with quantities that work out their sums: "Mia had 6 pears. Then she found 5
                 more, so she had 6 + 5 = 11 pears."
    lists        a list with numbered or lettered keys, then one entry found by its content ("Shelf2: owl" ...
                 "The owl is at shelf2."; "(A) 12 (B) 15 ..." ... "is jar (B)."): reading a key off a list is
                 what answering a multiple-choice question takes, and tiny models learn it slowly from the
                 tasks alone

The corpus never asks anything: no question marks, no instructions, no "The answer is", nothing of the tasks'
formats, and none of their items (tests/test_data.py checks). Run `python -m data.corpus` to print a sample.
"""

import random

from data import world
from data.world import ANIMAL, KIND_PLURALS, KIND_TRAITS, MATERIAL_PROPERTIES, MATERIALS, OBJECTS, PLACES
from data.world import ADD_MAX, MUL_MAX, PLACE_PROPERTIES, with_article

# Documents per kind at scale 1; the mix decides what the base model spends its capacity on.
FACT_DOCS = 7000
ARITHMETIC_PASSES = 10  # times the whole arithmetic table is written out
ARITHMETIC_LINES_PER_DOC = 16
COMPARISON_DOCS = 1000
NARRATIVE_DOCS = 5000
LIST_DOCS = 4000


def capital(text):
    return text[0].upper() + text[1:]


def pick(rng, templates, **fields):
    """One of the wordings, filled in."""
    return rng.choice(templates).format(**fields)


# ----------------------------------------------------------------------------------------------------------
# Facts

def animal_sentences(rng, name):
    """Every fact about one animal, each in a random wording, some followed by the next link of its chain."""
    animal = ANIMAL[name]
    f = dict(the=f"the {name}", The=f"The {name}", A=capital(with_article(name)), Plural=capital(animal["plural"]),
             kind=animal["kind"], kinds=KIND_PLURALS[animal["kind"]], home=animal["home"], food=animal["food"],
             legs=animal["legs"])
    kind = [pick(rng, ["{The} is {a_kind}.", "{A} is a kind of {kind}.", "{Plural} are {kinds}."],
                 a_kind=with_article(animal["kind"]), **f)]
    trait = rng.choice(list(KIND_TRAITS))
    has, has_not, kinds = KIND_TRAITS[trait]
    kind.append(f"{capital(with_article(animal['kind']))} {has if animal['kind'] in kinds else has_not}.")
    home = [pick(rng, ["{The} lives in the {home}.", "{Plural} live in the {home}.",
                       "You can find {the} in the {home}.", "The home of {the} is the {home}."], **f)]
    home_props = sorted(PLACES[animal["home"]])
    if home_props:
        home.append(f"The {animal['home']} {PLACE_PROPERTIES[rng.choice(home_props)][0]}.")
    legs_templates = ["{The} has {legs} legs.", "{A} has {legs} legs.", "{Plural} have {legs} legs."]
    if animal["legs"] == 0:
        legs_templates += ["{The} has no legs.", "{Plural} have no legs."]
    legs = [pick(rng, legs_templates, **f)]
    food = [pick(rng, ["{The} eats {food}.", "{Plural} eat {food}.", "The food of {the} is {food}."], **f)]
    if animal["flies"]:
        fly = [pick(rng, ["{The} can fly.", "{Plural} can fly.", "{A} flies through the air."], **f)]
    else:
        fly = [pick(rng, ["{The} cannot fly.", "{Plural} cannot fly.", "{A} does not fly."], **f)]
    return [kind, home, legs, food, fly]


def object_sentences(rng, name):
    material = world.OBJECT_MATERIAL[name]
    f = dict(The=f"The {name}", A=capital(with_article(name)), a=with_article(name), Plural=capital(name + "s"),
             plural=name + "s", mat=material, use=world.OBJECT_USE[name])
    made = [pick(rng, ["{A} is made of {mat}.", "{The} is made of {mat}.", "{Plural} are made of {mat}.",
                       "People make {plural} out of {mat}."], **f)]
    prop = rng.choice(list(MATERIAL_PROPERTIES))
    made.append(f"{capital(material)} {material_phrase(material, prop)}.")
    use = [pick(rng, ["People use {a} to {use}.", "To {use}, you can use {a}.", "{A} is used to {use}."], **f)]
    return [made, use]


def material_phrase(material, prop):
    has, has_not = MATERIAL_PROPERTIES[prop]
    return has if world.material_has(material, prop) else has_not


def material_sentences(rng, material):
    groups = []
    for prop in MATERIAL_PROPERTIES:
        phrase = material_phrase(material, prop)
        groups.append([pick(rng, ["{Mat} {phrase}.", "Anything made of {mat} {phrase}.",
                                  "{Mat} is a material that {phrase}."],
                            Mat=capital(material), mat=material, phrase=phrase)])
    made_of_it = [name for name, mat, _ in OBJECTS if mat == material]
    groups.append([f"{capital(join_and([with_article(o) for o in made_of_it]))} "
                   f"{'is' if len(made_of_it) == 1 else 'are'} made of {material}."])
    return groups


def place_sentences(rng, place):
    groups = [[f"The {place} {PLACE_PROPERTIES[prop][0]}."] for prop in sorted(PLACES[place])]
    residents = [name for name, animal in ANIMAL.items() if animal["home"] == place]
    rng.shuffle(residents)
    groups.append([f"The {place} is home to {join_and(['the ' + r for r in residents])}."])
    return groups


def kind_sentences(rng, kind):
    groups = []
    for has, has_not, kinds in KIND_TRAITS.values():
        if kind in kinds:
            subject = rng.choice([capital(with_article(kind)), f"Every {kind}"])
            groups.append([f"{subject} {has}."])
        else:
            groups.append([f"{capital(with_article(kind))} {has_not}."])
    members = ["the " + name for name, animal in ANIMAL.items() if animal["kind"] == kind]
    rng.shuffle(members)
    if len(members) == 1:
        groups.append([f"{capital(members[0])} is {with_article(kind)}."])
    else:
        groups.append([f"{capital(join_and(members))} are {KIND_PLURALS[kind]}."])
    return groups


def join_and(items):
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def fact_doc(rng):
    """A profile: most (not always all) of one entity's facts, in a random order; a chain stays in order."""
    subject_kind = rng.choices(["animal", "object", "material", "place", "kind"], weights=[8, 7, 3, 3, 2])[0]
    if subject_kind == "animal":
        groups = animal_sentences(rng, rng.choice(list(ANIMAL)))
    elif subject_kind == "object":
        groups = object_sentences(rng, rng.choice(OBJECTS)[0])
    elif subject_kind == "material":
        groups = material_sentences(rng, rng.choice(list(MATERIALS)))
    elif subject_kind == "place":
        groups = place_sentences(rng, rng.choice(list(PLACES)))
    else:
        groups = kind_sentences(rng, rng.choice(list(KIND_PLURALS)))
    rng.shuffle(groups)
    keep = max(1, len(groups) - rng.randint(0, len(groups) // 3))
    return " ".join(sentence for group in groups[:keep] for sentence in group)


# ----------------------------------------------------------------------------------------------------------
# Arithmetic and comparisons

def arithmetic_docs(rng, passes, lines_per_doc):
    lines = [f"{a} {op} {b} = {world.apply(a, op, b)}" for a, op, b in world.table_facts()] * passes
    rng.shuffle(lines)
    return ["\n".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]


def comparison_doc(rng):
    sentences = []
    for _ in range(rng.randint(3, 6)):
        if rng.random() < 0.7:
            x, y = rng.sample(range(0, 21), 2)
            big, small = max(x, y), min(x, y)
            sentences.append(rng.choice([f"{big} is more than {small}.", f"{small} is less than {big}.",
                                         f"{big} is bigger than {small}.", f"{small} is smaller than {big}."]))
        else:
            one, other = rng.sample(list(ANIMAL), 2)
            legs_one, legs_other = ANIMAL[one]["legs"], ANIMAL[other]["legs"]
            if legs_one == legs_other:
                sentences.append(f"The {one} and the {other} have the same number of legs.")
            else:
                word = "more" if legs_one > legs_other else "fewer"
                sentences.append(f"The {one} has {word} legs than the {other}.")
    return " ".join(sentences)


# ----------------------------------------------------------------------------------------------------------
# Narratives

def narrative_doc(rng):
    """A short story that does its sums as it goes (each sum a fact of the arithmetic table)."""
    (name, he), (other, _) = rng.sample(world.PEOPLE, 2)
    things = rng.choice(world.THINGS)
    container, containers = rng.choice(world.CONTAINERS)
    story = rng.randrange(6)
    if story == 0:
        x, y = rng.randint(1, ADD_MAX), rng.randint(1, ADD_MAX)
        return (f"{name} had {x} {things}. Then {he} found {y} more, so {he} had {x} + {y} = {x + y} {things}. "
                f"{other} counted them too.")
    if story == 1:
        x, y = difference(rng)
        return (f"{name} had {x} {things} and gave {y} of them to {other}. "
                f"Now {he} has {x} - {y} = {x - y} {things} left.")
    if story == 2:
        m, k = rng.randint(2, MUL_MAX), rng.randint(2, MUL_MAX)
        return (f"{name} filled {m} {containers} with {k} {things} in each {container}. "
                f"That makes {m} * {k} = {m * k} {things}.")
    if story == 3:
        k, each = rng.randint(2, MUL_MAX), rng.randint(1, MUL_MAX)
        return (f"{name} shared {k * each} {things} equally among {k} friends, "
                f"so each friend got {k * each} / {k} = {each} {things}.")
    if story == 4:
        k = rng.randint(2, 5)
        m = rng.randint(2, min(MUL_MAX, 2 * ADD_MAX // k))
        x = m * k
        y = rng.randint(max(1, x - ADD_MAX), min(x, ADD_MAX))
        return (f"{name} bought {m} {containers} of {things} with {k} in each, which is {m} * {k} = {x} {things}. "
                f"{other} ate {y} of them, leaving {x} - {y} = {x - y} {things}.")
    x, y = difference(rng)
    return (f"{name} has {x} {things} and {other} has {y} {things}. "
            f"{name} has {x} - {y} = {x - y} more {things} than {other}, and {other} has {x - y} fewer.")


def difference(rng):
    """(x, y) with y < x and x - y in the arithmetic table."""
    x = rng.randint(2, 2 * ADD_MAX)
    return x, rng.randint(max(1, x - ADD_MAX), min(x - 1, ADD_MAX))


# ----------------------------------------------------------------------------------------------------------
# Lists

LIST_KEYS = ["Shelf", "Box", "Room", "Page", "Card", "Line", "Row", "Door"]
LIST_CONTENTS = [
    list(ANIMAL), [name for name, _, _ in OBJECTS], list(MATERIALS), [f"the {place}" for place in PLACES],
    world.FOODS, ["0", "2", "4", "6", "8"],
]


def list_doc(rng):
    """Entries under keys, then one entry found again by its content and its key read off."""
    if rng.random() < 0.6:
        key = rng.choice(LIST_KEYS)
        entries = rng.sample(rng.choice(LIST_CONTENTS), rng.randint(2, 5))
        k = rng.randrange(len(entries))
        listed = "\n".join(f"{key}{i}: {entry}" for i, entry in enumerate(entries, 1))
        return f"{listed}\n{capital(entries[k])} is at {key.lower()}{k + 1}."
    name, things = rng.choice(world.PEOPLE)[0], rng.choice(world.THINGS)
    if rng.random() < 0.5:
        values = rng.sample(range(2 * ADD_MAX + 1), 5)
    else:  # evenly spaced, like the answer choices of a math question
        gap = rng.choice([1, 2, 3, 5])
        start = rng.randint(0, 2 * ADD_MAX)
        values = [start + i * gap for i in range(5)]
    k = rng.randrange(5)
    listed = " ".join(f"({letter}) {value}" for letter, value in zip("ABCDE", values))
    return (f"{name} counted the {things} in five jars: {listed}. "
            f"The jar with {values[k]} {things} is jar ({'ABCDE'[k]}).")


# ----------------------------------------------------------------------------------------------------------

def scaled(count, scale):
    return max(1, round(count * scale))


def make_corpus(seed, scale=1.0):
    """The corpus as a list of documents, shuffled; the same seed and scale give the same list."""
    rng = random.Random(f"corpus-{seed}")
    docs = [fact_doc(rng) for _ in range(scaled(FACT_DOCS, scale))]
    arithmetic = arithmetic_docs(rng, ARITHMETIC_PASSES, ARITHMETIC_LINES_PER_DOC)
    docs += arithmetic[:scaled(len(arithmetic), scale)]
    docs += [comparison_doc(rng) for _ in range(scaled(COMPARISON_DOCS, scale))]
    docs += [narrative_doc(rng) for _ in range(scaled(NARRATIVE_DOCS, scale))]
    docs += [list_doc(rng) for _ in range(scaled(LIST_DOCS, scale))]
    rng.shuffle(docs)
    return docs


if __name__ == "__main__":
    sample = make_corpus(seed=0, scale=0.002)
    print("\n\n".join(sample))
