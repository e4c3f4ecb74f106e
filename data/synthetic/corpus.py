"""The pretraining corpus: plain documents that teach the world of world.py and its arithmetic.

Nine kinds of document, each a few sentences:
    facts        profiles of an animal, an object, a material, a place or a kind of animal, every fact in
                 several wordings and orders (a model recalls a fact far better after reading it phrased many
                 ways), some with the next link of a chain beside it ("The nail is made of iron. Iron is pulled
                 by a magnet.")
    arithmetic   lines "7 + 5 = 12", the whole table of world.py written ARITHMETIC_PASSES times, shuffled
    comparisons  "9 is more than 4." (numbers up to MAX_NUMBER), "The spider has more legs than the ant."
    narratives   short stories with quantities that work out their sums: "Mia had 6 pears. Then she found 5
                 more, so she had 6 + 5 = 11 pears."
    lists        a list with numbered or lettered keys, then one entry found by its content ("Shelf2: owl" ...
                 "The owl is at shelf2."; "(A) 12 (B) 15 ..." ... "is jar (B).", half of these after the
                 choices written again one per line, "(a) 12 a\n(b) 15 b. 15 b."): reading a key off a list is what answering a multiple-choice question takes, and tiny
                 models learn it slowly from the tasks alone
    numbered     a list under numbered keys, each entry again on a line with its number and a fact, then every
                 entry looked up again by its last words, its number copied from where it was written:
                 "Shelf1: owl\nShelf2: cow\n1: owl, the owl eats mice 1\n2: cow, the cow eats grass 2. grass 2.
                 mice 1." (the lookup the commonsense rationales end with; a copy an induction head makes)
    echoes       a short run of the world's words written three times ("Say it again: owl 7 glass.\nowl 7
                 glass.\nowl 7 glass."): most of its tokens can only be predicted by copying from the context.
                 Without them the demo's base never learned the lookup above (right 30-37% of the time, chance,
                 after 1800 or 3600 steps); with enough of them it does, but the threshold moves with the seed
                 (8000: 30-90% over three bases; 16000: 74-89% over five, but 33-90% over seven beside the
                 same-or-not documents; ECHO_DOCS = 20000: 77-89% over six), and the commonsense tasks
                 go from chance to 50-98% (dev/DEMO_SWEEPS.md). They cost the math tasks some of the base's
                 steps, which is why the arithmetic table is written ARITHMETIC_PASSES = 20 times
    same or not  two values of one kind (foods, homes, kinds of animal, numbers of legs) and whether they are the
                 same: "Same or not: mice, asked fish no. 4, asked 4 yes." The verdict syn_boolq's rationale
                 ends with; the tasks alone never taught it (the demo answered "true" every time). With 1,000
                 of these documents syn_boolq was right 49-95% over six fine-tuning runs; with SAME_DOCS = 3000,
                 87-100% over seven
    everyday     people ask and answer ("Mia asked Tom a question: Where do owls live? Tom said that owls live in the
                 forest, and Mia said that was true."), school days, letters, notes under '###' headings,
                 money and trips: they use every word of the tasks' prompts and outputs, each token at least
                 data/prepare.py's MIN_CORPUS_COUNT times (see the section's comment for why)

The corpus never uses the tasks' formats: no prompt template, no "Answer format", no "The answer is" or "the
correct answer is", no labels like answer1, none of the tasks' questions, and none of their items
(tests/test_data.py checks). Run `python -m data.synthetic.corpus` to print a sample.
"""

import random

from data.synthetic import world
from data.synthetic.world import ANIMAL, KIND_PLURALS, KIND_TRAITS, MATERIAL_PROPERTIES, MATERIALS, OBJECTS, PLACES
from data.synthetic.world import ADD_MAX, MATERIAL_PURPOSES, MUL_MAX, PLACE_PROPERTIES, material_phrase
from data.synthetic.world import with_article

# Documents per kind at scale 1; the mix decides what the base model spends its capacity on.
FACT_DOCS = 7000
ARITHMETIC_PASSES = 20  # times the whole arithmetic table is written out
ARITHMETIC_LINES_PER_DOC = 16
COMPARISON_DOCS = 1000
NARRATIVE_DOCS = 5000
LIST_DOCS = 4000
NUMBERED_DOCS = 4000
ECHO_DOCS = 20000
SAME_DOCS = 3000
ECHO_WORDS = (3, 8)  # the fewest and most words in an echo's run
# the everyday documents, which use the words of the tasks' prompts and outputs
TALK_DOCS = 900
SCHOOL_DOCS = 350
LETTER_DOCS = 300
NOTES_DOCS = 1000
MONEY_DOCS = 500
TRIP_DOCS = 300
BOXES_DOCS = 200
SPELLING_PASSES = 30  # times each noun of the world starts a line of a spelling list
COUNT_PASSES = 25  # times each number up to MAX_NUMBER starts a line of a page of counts
LIST_LINES_PER_DOC = 6
MAX_NUMBER = 100  # the largest number the tasks write (answer choices of syn_aqua reach the 90s)


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
            x, y = rng.sample(range(0, MAX_NUMBER + 1), 2)
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
    world.FOODS, [str(n) for n in world.LEG_COUNTS],
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
    found = f"The jar with {values[k]} {things} is jar ({'ABCDE'[k]})."
    if rng.random() < 0.5:  # each jar again on a line, in lower case, and the count looked up: "15 b."
        lines = "\n".join(f"({letter}) {value} {letter}" for letter, value in zip("abcde", values))
        found = f"\n{lines}. {values[k]} {'abcde'[k]}. {found}"
    return f"{name} counted the {things} in five jars: {listed}. {found}"


def numbered_facts(rng):
    """(subject, fact about it, the fact's value) for one kind of fact, over every subject it covers: ("bee",
    "the bee is an insect", "an insect")."""
    form = rng.randrange(8)
    if form == 0:
        return [(n, world.fact_kind(n), with_article(a["kind"])) for n, a in ANIMAL.items()]
    if form == 1:
        return [(n, world.fact_legs(n), f"{a['legs']} legs") for n, a in ANIMAL.items()]
    if form == 2:
        return [(n, world.fact_food(n), a["food"]) for n, a in ANIMAL.items()]
    if form == 3:
        return [(n, world.fact_home(n), f"the {a['home']}") for n, a in ANIMAL.items()]
    if form == 4:
        return [(n, world.fact_flight(n), "can fly" if a["flies"] else "cannot fly") for n, a in ANIMAL.items()]
    if form == 5:
        return [(o, world.fact_made_of(o), m) for o, m, _ in OBJECTS]
    if form == 6:
        return [(o, world.fact_use(o), use) for o, _, use in OBJECTS]
    prop = rng.choice(list(MATERIAL_PROPERTIES))
    return [(m, world.fact_material(m, prop), material_phrase(m, prop)) for m in MATERIALS]


def numbered_entries(rng):
    """2-5 entries (subject, fact, value) of one kind of fact, their values, and the indices of the entries
    whose value no other entry has (at least one: those are the ones a lookup can find)."""
    while True:
        facts = numbered_facts(rng)
        entries = rng.sample(facts, rng.randint(2, min(5, len(facts))))
        values = [value for _, _, value in entries]
        unique = [i for i, value in enumerate(values) if values.count(value) == 1]
        if unique:
            return entries, values, unique


def numbered_doc(rng):
    """A list under numbered keys; each entry again on a line of its own, with its number, the entry and a
    fact about it, the number again; then an entry's last words found again and its number copied from there:
    "Shelf1: owl\nShelf2: cow\n1: owl, the owl eats mice 1\n2: cow, the cow eats grass 2. grass 2." The
    commonsense rationales read their options the same way."""
    entries, values, unique = numbered_entries(rng)
    key = rng.choice(LIST_KEYS)
    keyed = "\n".join(f"{key}{i}: {subject}" for i, (subject, _, _) in enumerate(entries, 1))
    bare = rng.random() < 0.3  # the subjects alone: "1: owl 1\n2: cow 2. cow 2."
    lines = []
    for i, (subject, fact, _) in enumerate(entries, 1):
        lines.append(f"{i}: {subject if bare else world.named_with_fact(subject, fact)} {i}")
    found = rng.sample(unique, len(unique))  # every entry with a value of its own, in a new order
    looked_up = ". ".join(f"{entries[i][0] if bare else values[i]} {i + 1}" for i in found)
    return f"{rng.choice(NUMBERED_HEADINGS)}:\n{keyed}\n" + "\n".join(lines) + f". {looked_up}."


NUMBERED_HEADINGS = ["Notes", "The list", "Facts", "What we saw", "Things to remember", "Cards", "Page"]


# ----------------------------------------------------------------------------------------------------------
# Everyday documents: talk, school, letters, notes, money, trips, counts
#
# The tasks' prompts and outputs use words that the documents above never need: the template's ("Below",
# " instruction", "###", " Response"), the questions' ("?", " How", " Which", " correct", " true"), the math
# stories' (" earns", " gift", "Together"), and words at the start of a line, which are other tokens than the
# same words after a space ("spider" is not " spider"; an output starts right after "### Response:\n"). When
# only adapters are fine-tuned, the embedding of a token that pretraining never saw stays noise, so these
# documents use every such word in the small world's ordinary life (data/prepare.py checks that each token of
# the suite occurs at least MIN_CORPUS_COUNT times). They still never use the tasks' formats: people here ask
# with plural subjects ("Where do owls live?"), and nobody writes "Answer format" or "the correct answer is".

def animal_question(rng):
    """(a question about an animal, its true answer, a false one), the answers in lower case:
    ("Where do owls live?", "owls live in the forest", "owls live in the desert")."""
    name = rng.choice(list(ANIMAL))
    animal, plural = ANIMAL[name], ANIMAL[name]["plural"]
    form = rng.randrange(5)
    if form == 0:
        right, wrong = animal["legs"], rng.choice([n for n in world.LEG_COUNTS if n != animal["legs"]])
        return (f"How many legs do {plural} have?", f"{plural} have {right or 'no'} legs",
                f"{plural} have {wrong or 'no'} legs")
    if form == 1:
        wrong = rng.choice([p for p in PLACES if p != animal["home"]])
        return f"Where do {plural} live?", f"{plural} live in the {animal['home']}", f"{plural} live in the {wrong}"
    if form == 2:
        wrong = rng.choice([f for f in world.FOODS if f != animal["food"]])
        return f"What do {plural} eat?", f"{plural} eat {animal['food']}", f"{plural} eat {wrong}"
    if form == 3:
        can, cannot = f"{plural} can fly", f"{plural} cannot fly"
        return (f"Can {plural} fly?", *((can, cannot) if animal["flies"] else (cannot, can)))
    wrong = rng.choice([k for k in KIND_PLURALS if k != animal["kind"]])
    return (f"Which kind of animal is the {name}?", f"the {name} is {with_article(animal['kind'])}",
            f"the {name} is {with_article(wrong)}")


def talk_doc(rng):
    """People ask each other about the world, answer, and say whether the answer was true."""
    (a, she), (b, he), (c, _) = rng.sample(world.PEOPLE, 3)
    question, right, wrong = animal_question(rng)
    f = dict(a=a, b=b, c=c, She=capital(she), he=he, q=question, right=right, wrong=wrong,
             place=rng.choice(list(PLACES)))
    opening = pick(rng, ["{a} had a question for {b}. {q}", "{a} asked {b} a question: {q}",
                         "{a} and {b} went to the {place} to see the animals. {a} asked {b}: {q}",
                         "{a} read a passage from a book about animals and then asked {b}: {q}",
                         "{a} and {b} played a game with question/answer, true/false and problem/solution cards. "
                         "{a} read the first card: {q}"], **f)
    if rng.random() < 0.6:
        reply = pick(rng, ["{b} said that {right}, and {a} said that was true.",
                           "{b} thought for a while and said that {right}. {She} said it was the correct answer.",
                           "{b} gave the answer at once: {right}. That is correct, said {a}.",
                           "{b} did not know, so they asked {c}. {c} said that {right}, and it was true."], **f)
    else:
        reply = pick(rng, ["{b} said that {wrong}. That is false, said {a}. The book says that {right}.",
                           "{b} said that {wrong}, but that was not correct. {a} looked it up, and the "
                           "passage says that {right}.",
                           "At first {b} said that {wrong}. Then {he} saw that it was false: {right}."], **f)
    return f"{opening} {reply}" + (f" {outing(rng, a, b)}" if rng.random() < 0.5 else "")


def outing(rng, a, b):
    """Where to go to see an animal, or what to use for a job, talked over."""
    name, (obj, _, use) = rng.choice(list(ANIMAL)), rng.choice(OBJECTS)
    prop = rng.choice(list(MATERIAL_PURPOSES))
    material = rng.choice([m for m in MATERIALS if world.material_has(m, prop)])
    return pick(rng, ["Then {a} said {she} would like to see {plural}. {b} said they should go to the {home}, "
                      "and they did.",
                      "Then {a} wanted to {use} and asked what to get for it. {b} had a solution: {a_obj}.",
                      "Then {a} wanted to {purpose}. {b} said to use {material}, because {material} {does}.",
                      "It was a good day, so they went to the {home} to see the {plural} and their young."],
                a=a, b=b, she=dict(world.PEOPLE)[a], plural=ANIMAL[name]["plural"], home=ANIMAL[name]["home"],
                use=use, a_obj=with_article(obj), purpose=MATERIAL_PURPOSES[prop], material=material,
                does=material_phrase(material, prop))


def school_doc(rng):
    """A day at school, told in the words of instructions, tasks and responses."""
    (name, he), (other, _) = rng.sample(world.PEOPLE, 2)
    animal, place = rng.choice(list(ANIMAL)), rng.choice(list(PLACES))
    f = dict(name=name, other=other, he=he, He=capital(he), his="his" if he == "he" else "her", place=place,
             animal=animal, a_animal=with_article(animal), plural=ANIMAL[animal]["plural"],
             home=ANIMAL[animal]["home"], food=ANIMAL[animal]["food"])
    sentences = [
        ["Below is a picture of the {place} that {name} drew at school.",
         "Below is a list of the animals that the class saw at the {place}.",
         "Below the picture of the {home}, {name} wrote a short story."],
        ["The teacher gave the class a task: write about {a_animal}.",
         "The teacher gave an instruction to the class: choose an animal and write about it.",
         "Each child had one task, and the instruction for it was on the board."],
        ["{name} wants to write about the {plural}, so {he} asked {other} for some input.",
         "{name} chose the {plural}, and {other} gave {name} some input about them."],
        ["A book about the {home} provides further context: {plural} live there and eat {food}.",
         "The teacher paired each child with a friend, and {other} provides further context about the {home}."],
        ["{name} wrote a response that describes how the {plural} live in the {home}.",
         "{He} completes the task before lunch, and {his} response describes the {animal} well."],
        ["The teacher said the story was in a good format and appropriately short.",
         "The teacher liked it and made a request: Write the name of each animal in the same format.",
         "The following day, the class went to the {place} to see the animals for real."],
    ]
    keep = sorted(rng.sample(range(len(sentences)), rng.randint(3, 5)))
    return " ".join(pick(rng, sentences[i], **f) for i in keep)


VEHICLES = ["bus", "train", "boat", "bike", "cart"]  # syn_aqua's
LETTER_LINES = [
    ["After lunch, we saw {n} {seen} there.", "After the rain, we went to see the {seen}."],
    ["With the money from {third}, I bought a {obj}.", "With {third}, I counted {n} {seen}."],
    ["Together we counted the {seen}.", "Together we fed the {plural} some {food}."],
    ["{She} says that {plural} eat {food}.", "{She} also wants to see the {plural}, so I will go with {him}."],
    ["There were {n} {seen} at the {place}.", "There is a new {obj} in our room."],
    ["Each day I feed the {plural}.", "Each of us took a {obj} home."],
    ["It was a good day.", "It was cold, but it did not rain much."],
    ["We went there by {vehicle}.", "We took the {vehicle} home."],
    ["What a day it was.", "What do you think the {plural} like to eat? {third} says they eat {food}."],
]


def letter_doc(rng):
    """A letter, a sentence a line, and sometimes the reply under a heading."""
    (name, _), (other, _), (third, she) = rng.sample(world.PEOPLE, 3)
    animal, place = rng.choice(list(ANIMAL)), rng.choice(list(PLACES))
    seen = rng.choice([n for n in ANIMAL if ANIMAL[n]["home"] == place])
    f = dict(third=third, She=capital(she), him="him" if she == "he" else "her", place=place,
             plural=ANIMAL[animal]["plural"], seen=ANIMAL[seen]["plural"], food=ANIMAL[animal]["food"],
             obj=rng.choice(OBJECTS)[0], n=rng.randint(2, 9), vehicle=rng.choice(VEHICLES))
    lines = [f"Dear {other},", f"{third} and I went to the {place} today."]
    lines += [pick(rng, options, **f) for options in rng.sample(LETTER_LINES, 3)]
    lines.append(pick(rng, ["Please write a response soon.", "Please write back and tell me about the {plural}.",
                            "Answer me soon, and tell me what {plural} eat."], **f))
    letter = "\n".join(lines + [name])
    if rng.random() < 0.4:
        letter += (f"\n### {rng.choice(['Response', 'Answer'])} from {other}\nDear {name},\n"
                   f"Thank you for the letter. {capital(f['plural'])} eat {f['food']}, {third} is right.\n{other}")
    return letter


def notes_doc(rng):
    """A page of notes: a '###' heading, then one short line per entry, each starting with the thing listed."""
    name = rng.choice(world.PEOPLE)[0]
    place, material = rng.choice(list(PLACES)), rng.choice(list(MATERIALS))
    animals, objects = rng.sample(list(ANIMAL), 4), rng.sample(OBJECTS, 4)
    pages = [  # (headings to choose from, the lines, a last line or "")
        ([f"Animals of the {place}", f"Which animals live in the {place}"],
         [n for n in ANIMAL if ANIMAL[n]["home"] == place], f"All of these animals live in the {place}."),
        ([f"Things made of {material}"], [o for o, m, _ in OBJECTS if m == material],
         f"All of these objects are made of {material}."),
        ([f"Things in {name}'s room"], [o for o, _, _ in objects], ""),
        ([f"Materials in {name}'s shed"], rng.sample(list(MATERIALS), 4),
         f"{name} keeps all of these materials for making things."),
        (["What the animals eat", "How to feed the animals"],
         [f"{ANIMAL[n]['food']} for the {ANIMAL[n]['plural']}" for n in animals], ""),
        (["Where the animals live"], [f"{n}/{ANIMAL[n]['home']}" for n in animals], ""),
        ([f"Things {name} takes to the {place}", f"Instruction for the trip to the {place}"],
         [with_article(o) for o, _, _ in objects], ""),
        ([f"Animals {name} saw at the farm show"], [with_article(n) for n in animals], ""),
        ([f"Places {name} went to"], [f"the {p}" for p in rng.sample(list(PLACES), 4)], ""),
        (["Choices for lunch", "Input from the class on lunch"],
         [" or ".join(rng.sample(["apples", "pears", "eggs", "cookies"], 2)) for _ in range(3)], ""),
        ([f"Problems {name} solved"], problem_lines(rng) + problem_lines(rng) + problem_lines(rng), ""),
    ]
    headings, lines, last = rng.choice(pages)
    return "\n".join([f"### {rng.choice(headings)}"] + lines + ([last] if last else []))


def problem_lines(rng):
    """A problem and its solution: a material for a purpose, or an object for a job."""
    if rng.random() < 0.7:
        prop = rng.choice(list(MATERIAL_PURPOSES))
        material = rng.choice([m for m in MATERIALS if world.material_has(m, prop)])
        return [f"Problem: we need something to {MATERIAL_PURPOSES[prop]}.",
                f"Solution: use {material}, because {material} {material_phrase(material, prop)}."]
    name, _, use = rng.choice(OBJECTS)
    return [f"Problem: {rng.choice(world.PEOPLE)[0]} wants to {use}.", f"Solution: {with_article(name)} helps."]


GIFTS = ["ball", "book", "kite", "ring", "scarf", "sweater"]


def money_doc(rng):
    """Earning, spending and sharing, a sentence a line, each sum a fact of the arithmetic table."""
    (name, he), (other, _) = rng.sample(world.PEOPLE, 2)
    He, him, things = capital(he), "him" if he == "he" else "her", rng.choice(world.THINGS)
    form = rng.randrange(5)
    if form == 0:
        wage = rng.randint(2, MUL_MAX)
        days = rng.randint(2, min(MUL_MAX, 2 * ADD_MAX // wage))
        x = wage * days
        gift = rng.randint(max(1, x - ADD_MAX), min(x - 1, ADD_MAX))
        job = rng.choice(["helping at the farm", "feeding the hens", "making kites", "washing the boat"])
        lines = [f"{name} earns {wage} dollars each day for {job}.",
                 f"After {days} days, {he} has {wage} * {days} = {x} dollars.",
                 f"{He} spends {gift} dollars on a gift for {other}, a new {rng.choice(GIFTS)}.",
                 f"{He} still has {x} - {gift} = {x - gift} dollars now."]
    elif form == 1:
        a, b = rng.randint(2, ADD_MAX), rng.randint(2, ADD_MAX)
        lines = [f"{name} and {other} went to pick {things}. {name} picked {a} and {other} picked {b}.",
                 f"Together they have {a} + {b} = {a + b} {things}.",
                 "They will give all of them away at the fair."]
    elif form == 2:
        price = rng.randint(2, MUL_MAX)
        count = rng.randint(2, min(MUL_MAX, ADD_MAX // price))
        cost, paid = count * price, rng.randint(count * price + 1, count * price + ADD_MAX)
        lines = [f"{name} buys {count} {things} at {price} dollars each.",
                 f"That is how much the {things} cost: {count} * {price} = {cost} dollars.",
                 f"{He} pays with {paid} dollars and gets {paid} - {cost} = {paid - cost} dollars in change."]
    elif form == 3:
        a, b = rng.randint(1, ADD_MAX), rng.randint(1, ADD_MAX)
        lunch = rng.randint(max(1, a + b - ADD_MAX), min(a + b - 1, ADD_MAX))
        lines = [f"{name} already has {b} dollars, and {other} gives {him} {a} more.",
                 f"With the dollars from {other}, {he} has {b} + {a} = {a + b} dollars.",
                 f"{He} uses {lunch} dollars for lunch and keeps the rest, {a + b} - {lunch} = {a + b - lunch}."]
    else:
        friends, each = rng.randint(2, MUL_MAX), rng.randint(1, MUL_MAX)
        lines = [f"{name} counts {friends * each} {things} and shares them equally among {friends} friends.",
                 f"Each friend gets {friends * each} / {friends} = {each}, and they put them in their bags."]
    return "\n".join(lines)


def trip_doc(rng):
    """Trips, ages, averages, and two numbers from their sum and difference, worked out as they are told."""
    (name, _), (other, she) = rng.sample(world.PEOPLE, 2)
    form = rng.randrange(4)
    if form == 0:
        speed, hours = rng.randint(2, MUL_MAX), rng.randint(2, MUL_MAX)
        vehicle, place = rng.choice(VEHICLES), rng.choice(list(PLACES))
        return (f"{name} went to the {place} by {vehicle}. The {vehicle} travels {speed} km each hour. "
                f"After {hours} hours it had gone {speed} * {hours} = {speed * hours} km, and the travel was over.")
    if form == 1:
        age = rng.randint(2, ADD_MAX - 1)
        older, years = rng.randint(1, ADD_MAX - age), rng.randint(1, ADD_MAX)
        return (f"{name} is {age} years old. {other} is {older} years older, so {she} is {age} + {older} = "
                f"{age + older} years old. In {years} years {she} will be {age + older} + {years} = "
                f"{age + older + years}.")
    if form == 2:
        mean = rng.randint(1, MUL_MAX)
        a = rng.randint(0, 3 * mean)
        b = rng.randint(0, 3 * mean - a)
        c = 3 * mean - a - b
        return (f"{name} got {a}, {b} and {c} points in three games. The sum of the points is {a} + {b} = "
                f"{a + b}, then {a + b} + {c} = {3 * mean}, so the average is {3 * mean} / 3 = {mean} points.")
    larger = rng.randint(2, MUL_MAX)
    smaller = rng.randint(1, larger - 1)
    total, gap = larger + smaller, larger - smaller
    return (f"Two numbers, {larger} and {smaller}, have a sum of {total} and a difference of {gap}. "
            f"Adding the two gives {total} + {gap} = {2 * larger}, and half of it, {2 * larger} / 2 = {larger}, "
            f"is the larger number.")


def boxes_doc(rng):
    """Five boxes marked with the letters a to e, and which holds the most and the fewest."""
    name, things = rng.choice(world.PEOPLE)[0], rng.choice(world.THINGS)
    counts = rng.sample(range(MAX_NUMBER + 1), 5)
    held = ", ".join(f"box {letter} holds {n}" for letter, n in zip("abcde", counts))
    most, fewest = "abcde"[counts.index(max(counts))], "abcde"[counts.index(min(counts))]
    return (f"{name} put {things} in five boxes and marked the boxes a, b, c, d and e. Now {held}. "
            f"Box {most} holds the most {things}, and box {fewest} holds the fewest.")


def echo_doc(rng):
    """A run of the world's words and numbers, written three times: copying from the context is the only way
    to predict the second and third, which is what makes a small model grow induction heads early."""
    words = list(ANIMAL) + [name for name, _, _ in OBJECTS] + list(MATERIALS) + world.FOODS
    # numbers up to 20, and 20 of the larger ones up to MAX_NUMBER: the lookups of syn_aqua's choices copy those
    # (runs of numbers alone, tried too, kept the base from learning to copy at all)
    words += [str(n) for n in range(21)] + [str(n) for n in rng.sample(range(21, MAX_NUMBER + 1), 20)]
    run = " ".join(rng.sample(words, rng.randint(*ECHO_WORDS)))
    return f"{rng.choice(ECHO_HEADINGS)}: " + ".\n".join([run] * 3) + "."


ECHO_HEADINGS = ["Say it again", "Copy this", "Read it twice", "Once more"]


def same_doc(rng):
    """Lines "mice, asked fish no" / "fish, asked fish yes": two values of one kind, the same half the time."""
    lines = []
    for _ in range(rng.randint(4, 8)):
        values = rng.choice(SAME_VALUES)
        told = rng.choice(values)
        asked = told if rng.random() < 0.5 else rng.choice([v for v in values if v != told])
        lines.append(f"{told}, asked {asked} {'yes' if asked == told else 'no'}")
    return f"{rng.choice(SAME_HEADINGS)}: " + ". ".join(lines) + "."


# the values a syn_boolq question compares, by claim: two of one list are compared, never two lists
SAME_VALUES = [world.FOODS, list(PLACES), list(KIND_PLURALS), [str(n) for n in world.LEG_COUNTS]]
SAME_HEADINGS = ["Same or not", "The same", "Is it the same"]


def spelling_docs(rng, passes, lines_per_doc):
    """Spelling lists: every noun of the world starts a line `passes` times. Outputs start with one right
    after a newline ("spider. 1 ant, 2 spider"), and elsewhere the corpus writes them after a space."""
    words = list(ANIMAL) + [name for name, _, _ in OBJECTS] + list(MATERIALS) + world.FOODS
    lines = [f"{word}/{ANIMAL[word]['plural']}" if word in ANIMAL else word for word in words] * passes
    rng.shuffle(lines)
    return ["\n".join(["### Words for the spelling test"] + lines[i:i + lines_per_doc])
            for i in range(0, len(lines), lines_per_doc)]


def count_docs(rng, passes, lines_per_doc):
    """Pages of counts, every number from 0 to MAX_NUMBER starting a line `passes` times ("72 stamps from
    Mia"): outputs start with a number right after a newline, and the arithmetic lines start with few of the
    larger ones."""
    numbers = list(range(MAX_NUMBER + 1)) * passes
    rng.shuffle(numbers)
    docs = []
    for i in range(0, len(numbers), lines_per_doc):
        name, things = rng.choice(world.PEOPLE)[0], rng.choice(world.THINGS)
        lines = [f"{n} {things} from {rng.choice(world.PEOPLE)[0]}" for n in numbers[i:i + lines_per_doc]]
        docs.append("\n".join([f"### {name}'s {things}"] + lines))
    return docs


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
    docs += [numbered_doc(rng) for _ in range(scaled(NUMBERED_DOCS, scale))]
    docs += [echo_doc(rng) for _ in range(scaled(ECHO_DOCS, scale))]
    docs += [same_doc(rng) for _ in range(scaled(SAME_DOCS, scale))]
    for make, count in ((talk_doc, TALK_DOCS), (school_doc, SCHOOL_DOCS), (letter_doc, LETTER_DOCS),
                        (notes_doc, NOTES_DOCS), (money_doc, MONEY_DOCS), (trip_doc, TRIP_DOCS),
                        (boxes_doc, BOXES_DOCS)):
        docs += [make(rng) for _ in range(scaled(count, scale))]
    for pages in (spelling_docs(rng, SPELLING_PASSES, LIST_LINES_PER_DOC),
                  count_docs(rng, COUNT_PASSES, LIST_LINES_PER_DOC)):
        docs += pages[:scaled(len(pages), scale)]
    rng.shuffle(docs)
    return docs


if __name__ == "__main__":
    sample = make_corpus(seed=0, scale=0.002)
    print("\n\n".join(sample))
