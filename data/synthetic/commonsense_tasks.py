"""Generators for the five synthetic commonsense tasks, stand-ins for the paper's BoolQ, PIQA, ARC-Easy,
ARC-Challenge and OpenBookQA. Each takes a random.Random and returns one item in the LLM-Adapters format, with
LLM-Adapters' instruction wording for that data set and an output ending "the correct answer is <label>".

What each one asks about the world of world.py:
    syn_boolq   true or false, about a short passage given in "input" (the passage holds the answer)
    syn_piqa    which of two solutions reaches a goal: the tool for a job, where to find an animal, what to
                feed it, what material to build something from
    syn_arc_e   four-way, one fact: can it fly, where it lives, what it eats, its legs, its kind, what an
                object is made of, which material has a property
    syn_arc_c   four-way, two facts chained: which object floats (object -> material -> floats), which animal
                lays eggs (animal -> kind -> trait), which lives in a cold place (animal -> home -> cold)
    syn_obqa    four-way, one fact plus a step of reasoning: the one that cannot fly, the most or fewest legs,
                more legs than a given animal, the material for a purpose

Every item has exactly one right option (the wrong ones are drawn from the entities that lack the property),
and the right option's position is uniform.

Outputs end as LLM-Adapters' do, "the correct answer is <label>", after a short rationale that a tiny model
can follow. Each option gets a line: its number, the option copied as the prompt writes it, the fact the
question turns on, the number again ("1: parrot, the parrot is a bird 1\n2: bee, the bee is an insect 2 ...");
then the value asked for is written again with the number of the option that has it ("an insect 2").
Questions about one subject state the fact first ("the bear lives in the forest.\n1: the pond 1\n2: the
forest 2. the forest 2"). syn_boolq writes the asked value, the passage's fact, and the asked value again with a
verdict: "the question asked reptile. the bear is a mammal, asked reptile no" (the verdict a table the corpus
writes out: "mammal, asked reptile no. bird, asked bird yes").
Why: a tiny model soon knows which option is right, but learns very slowly to name its label in one step, or
to compare two words it wrote (near chance after several epochs in our runs). Written this way, each option
is copied from the line of the prompt with the same number, each fact is a completion the pretraining corpus
taught in the same words, and the label is a copy of the number that followed the same words earlier in the
output: the pattern an induction head makes (the corpus's echo documents are there to grow those heads;
dev/DEMO_SWEEPS.md has the sweeps behind all this). syn_boolq's verdict is the one comparison, learned in
pretraining as a table; the asked value before it is a copy of what followed the first "asked" (the copy from
the question, at the start of the output, has nothing nearer to copy instead; put right after the fact, half
the fine-tuning runs copied the fact's value there).
tasks.make_task(rationales=False) strips the rationale, leaving LLM-Adapters' bare sentence. A rationale never
contains a label word, so scoring (the first label match) reads the final one.
"""

from data.synthetic import world
from data.synthetic.world import ANIMAL, FOODS, KIND_PLURALS, KIND_TRAITS, LEG_COUNTS, MATERIAL_PROPERTIES
from data.synthetic.world import MATERIAL_PURPOSES, MATERIALS, OBJECTS, PEOPLE, PLACE_PROPERTIES, PLACES
from data.synthetic.world import fact_flight, fact_food, fact_home, fact_kind, fact_legs, fact_made_of, fact_use
from data.synthetic.world import with_article

ANSWER = "the correct answer is {label}"


def answer(rationale, label):
    return f"{rationale}, so " + ANSWER.format(label=label)


def read_options(options, right, target, describe=None, fact=None):
    """The rationale: the fact (if any), then a line per option, its number, the option copied as the prompt
    writes it and the fact that decides it, the number again; then the target with the right option's number:
    "the bear lives in the forest.\n1: the pond 1\n2: the forest 2. the forest 2"."""
    lines = [f"{i}: {world.named_with_fact(option, describe(option)) if describe else option} {i}"
             for i, option in enumerate(options, 1)]
    return (f"{fact}.\n" if fact else "") + "\n".join(lines) + f". {target} {options.index(right) + 1}"


def four_way(rng, question, right, wrong_pool, target=None, describe=None, fact=None):
    """An ARC/OBQA item: the right option and three wrong ones from the pool, in a random order. target is
    what the rationale looks for among the described options (by default the right option itself)."""
    options = [right] + rng.sample(sorted(wrong_pool), 3)
    rng.shuffle(options)
    label = f"answer{options.index(right) + 1}"
    listed = "".join(f"Answer{i}: {option}\n\n" for i, option in enumerate(options, 1))
    instruction = (f"Please choose the correct answer to the question: {question}\n\n{listed}"
                   f"Answer format: answer1/answer2/answer3/answer4")
    rationale = read_options(options, right, target or right, describe, fact)
    return {"instruction": instruction, "input": "", "output": answer(rationale, label), "answer": label}


def split_by(names, has):
    """(the names for which has(name) is true, the others)."""
    return [n for n in names if has(n)], [n for n in names if not has(n)]


def which(rng, noun, phrase, names, has, describe, target=None):
    """'Which of these <noun> <phrase>?' with one that has it and three that do not; the rationale describes
    each option and looks for target (by default the phrase)."""
    positives, negatives = split_by(names, has)
    return four_way(rng, f"Which of these {noun} {phrase}?", rng.choice(positives), negatives,
                    target or phrase, describe)


ANIMALS = list(ANIMAL)
OBJECT_NAMES = [name for name, _, _ in OBJECTS]


def with_three_without(names, has):
    """Whether a property splits the names into at least one with it and three without."""
    positives, negatives = split_by(names, has)
    return len(positives) >= 1 and len(negatives) >= 3


def material_does(prop):
    """What the rationales say about a material option: 'wood floats on water' / 'stone sinks in water'."""
    return lambda material: world.fact_material(material, prop)


# ----------------------------------------------------------------------------------------------------------
# syn_arc_e: one fact

def syn_arc_e(rng):
    form = rng.randrange(7)
    if form == 0:
        return which(rng, "animals", "can fly", ANIMALS, lambda n: ANIMAL[n]["flies"], fact_flight)
    if form == 1:
        name = rng.choice(ANIMALS)
        home = ANIMAL[name]["home"]
        return four_way(rng, f"Where does the {name} live?", f"the {home}",
                        [f"the {p}" for p in PLACES if p != home], fact=fact_home(name))
    if form == 2:
        name = rng.choice(ANIMALS)
        food = ANIMAL[name]["food"]
        return four_way(rng, f"What does the {name} eat?", food, [f for f in FOODS if f != food],
                        fact=fact_food(name))
    if form == 3:
        name = rng.choice(ANIMALS)
        legs = ANIMAL[name]["legs"]
        return four_way(rng, f"How many legs does the {name} have?", str(legs),
                        [str(n) for n in LEG_COUNTS if n != legs], fact=fact_legs(name))
    if form == 4:
        kind = rng.choice(list(KIND_PLURALS))
        return which(rng, "animals", f"is {with_article(kind)}", ANIMALS, lambda n: ANIMAL[n]["kind"] == kind,
                     fact_kind, target=with_article(kind))
    if form == 5:
        name = rng.choice(OBJECT_NAMES)
        material = world.OBJECT_MATERIAL[name]
        return four_way(rng, f"What is {with_article(name)} made of?", material,
                        [m for m in MATERIALS if m != material], fact=fact_made_of(name))
    prop = rng.choice(list(MATERIAL_PROPERTIES))
    return which(rng, "materials", MATERIAL_PROPERTIES[prop][0], list(MATERIALS),
                 lambda m: world.material_has(m, prop), material_does(prop))


# ----------------------------------------------------------------------------------------------------------
# syn_arc_c: two facts chained, both written out for each option

def syn_arc_c(rng):
    form = rng.randrange(3)
    if form == 0:
        prop = rng.choice(list(MATERIAL_PROPERTIES))

        def describe(obj):
            material = world.OBJECT_MATERIAL[obj]
            return f"{fact_made_of(obj)} and {world.fact_material(material, prop)}"
        return which(rng, "objects", MATERIAL_PROPERTIES[prop][0], OBJECT_NAMES,
                     lambda o: world.object_has(o, prop), describe)
    if form == 1:
        trait = rng.choice(list(KIND_TRAITS))
        has, has_not, kinds = KIND_TRAITS[trait]

        def describe(name):
            kind = ANIMAL[name]["kind"]
            return f"{fact_kind(name)} and {with_article(kind)} {has if kind in kinds else has_not}"
        return which(rng, "animals", has, ANIMALS, lambda n: world.animal_has_trait(n, trait), describe)
    prop = rng.choice(list(PLACE_PROPERTIES))
    is_like, lives_like = PLACE_PROPERTIES[prop]

    def describe(name):
        home = ANIMAL[name]["home"]
        return fact_home(name) + (f" and the {home} {is_like}" if prop in PLACES[home] else "")
    return which(rng, "animals", lives_like, ANIMALS, lambda n: world.animal_lives_where(n, prop), describe,
                 target=is_like)


# ----------------------------------------------------------------------------------------------------------
# syn_obqa: one fact and a step of reasoning

def syn_obqa(rng):
    form = rng.randrange(5)
    if form == 0:
        return which(rng, "animals", "cannot fly", ANIMALS, lambda n: not ANIMAL[n]["flies"], fact_flight)
    if form == 1:
        # the one material without a property that the other three have
        props = [p for p in MATERIAL_PROPERTIES
                 if with_three_without(list(MATERIALS), lambda m: not world.material_has(m, p))]
        prop = rng.choice(props)
        return which(rng, "materials", MATERIAL_PROPERTIES[prop][1], list(MATERIALS),
                     lambda m: not world.material_has(m, prop), material_does(prop))
    if form == 2:
        most = rng.random() < 0.5
        by_legs = {}
        for name in rng.sample(ANIMALS, len(ANIMALS)):
            by_legs.setdefault(ANIMAL[name]["legs"], name)
        counts = rng.sample(sorted(by_legs), 4)
        right_legs = max(counts) if most else min(counts)
        wrong = [by_legs[c] for c in counts if c != right_legs]
        question = f"Which of these animals has the {'most' if most else 'fewest'} legs?"
        return four_way(rng, question, by_legs[right_legs], wrong, f"{right_legs} legs", fact_legs)
    if form == 3:
        reference = rng.choice([n for n in ANIMALS if ANIMAL[n]["legs"] < 8])
        legs = ANIMAL[reference]["legs"]
        others = [n for n in ANIMALS if n != reference]
        positives, negatives = split_by(others, lambda n: ANIMAL[n]["legs"] > legs)
        right = rng.choice(positives)
        return four_way(rng, f"Which of these animals has more legs than the {reference}?", right, negatives,
                        f"{ANIMAL[right]['legs']} legs", fact_legs, fact=fact_legs(reference))
    name, he = rng.choice(PEOPLE)
    props = [p for p in MATERIAL_PURPOSES if with_three_without(list(MATERIALS), lambda m: world.material_has(m, p))]
    prop = rng.choice(props)
    positives, negatives = split_by(list(MATERIALS), lambda m: world.material_has(m, prop))
    question = f"{name} wants to {MATERIAL_PURPOSES[prop]}. Which material should {he} use?"
    return four_way(rng, question, rng.choice(positives), negatives, MATERIAL_PROPERTIES[prop][0],
                    material_does(prop))


# ----------------------------------------------------------------------------------------------------------
# syn_piqa: two solutions to a goal

def syn_piqa(rng):
    """Short solutions ("a nail" or "a boot"), read like the four-way options."""
    form = rng.randrange(4)
    describe = fact = None
    if form == 0:
        name = rng.choice(OBJECT_NAMES)
        other = rng.choice([o for o in OBJECT_NAMES if o != name])
        use = world.OBJECT_USE[name]
        goal = rng.choice(["How do you {}?", "What helps you {}?"]).format(use)
        right, wrong, target = with_article(name), with_article(other), use
        facts = {with_article(o): fact_use(o) for o in (name, other)}
        describe = facts.get
    elif form == 1:
        name = rng.choice(ANIMALS)
        home = ANIMAL[name]["home"]
        goal = rng.choice(["Where can you go to see {}?", "Where do you look for {}?"]).format(with_article(name))
        right, wrong = f"the {home}", f"the {rng.choice([p for p in PLACES if p != home])}"
        target, fact = right, fact_home(name)
    elif form == 2:
        name = rng.choice(ANIMALS)
        food = ANIMAL[name]["food"]
        goal = rng.choice(["What should you feed {}?", "What does {} like to eat?"]).format(with_article(name))
        right, wrong = food, rng.choice([f for f in FOODS if f != food])
        target, fact = right, fact_food(name)
    else:
        prop = rng.choice(list(MATERIAL_PURPOSES))
        positives, negatives = split_by(list(MATERIALS), lambda m: world.material_has(m, prop))
        goal = f"What should you use to {MATERIAL_PURPOSES[prop]}?"
        right, wrong = rng.choice(positives), rng.choice(negatives)
        target, describe = MATERIAL_PROPERTIES[prop][0], material_does(prop)
    first = rng.random() < 0.5
    solution1, solution2 = (right, wrong) if first else (wrong, right)
    label = "solution1" if first else "solution2"
    instruction = (f"Please choose the correct solution to the question: {goal}\n\n"
                   f"Solution1: {solution1}\n\nSolution2: {solution2}\n\n"
                   f"Answer format: solution1/solution2")
    output = answer(read_options([solution1, solution2], right, target, describe, fact), label)
    return {"instruction": instruction, "input": "", "output": output, "answer": label}


# ----------------------------------------------------------------------------------------------------------
# syn_boolq: true or false about a passage

def animal_claims(name):
    """What a passage can say about an animal: {claim: (sentence, yes/no question with a blank, the value
    that makes it true, the values it can take)}."""
    animal = ANIMAL[name]
    legs_word = "no" if animal["legs"] == 0 else str(animal["legs"])
    return {
        "food": (f"The {name} eats {animal['food']}.", f"does the {name} eat {{}}", animal["food"], FOODS),
        "legs": (f"It has {legs_word} legs.", f"does the {name} have {{}} legs", str(animal["legs"]),
                 [str(n) for n in LEG_COUNTS]),
        "kind": (f"It is {with_article(animal['kind'])}.", f"is the {name} {{}}", with_article(animal["kind"]),
                 [with_article(k) for k in KIND_PLURALS]),
        "home": (f"It lives in the {animal['home']}.", f"does the {name} live in the {{}}", animal["home"],
                 list(PLACES)),
    }


# the fact a syn_boolq rationale writes for each claim, in the corpus's words ("the hen eats seeds")
CLAIM_FACTS = {"food": fact_food, "legs": fact_legs, "kind": fact_kind, "home": fact_home}


def compared_word(value):
    """A claim's value as the verdict compares it, one word: "a reptile" -> "reptile", "4", "seeds"."""
    return value.split()[-1]


def syn_boolq(rng):
    name = rng.choice(ANIMALS)
    person = rng.choice(PEOPLE)[0]
    claims = animal_claims(name)
    asked = rng.choice(list(claims))
    told = [asked] + rng.sample([c for c in claims if c != asked], rng.randint(1, 2))
    rng.shuffle(told)
    place = ANIMAL[name]["home"]
    passage = " ".join([f"{person} went to the {place} and saw {with_article(name)}."] +
                       [claims[c][0] for c in told])
    _, question, true_value, values = claims[asked]
    is_true = rng.random() < 0.5
    asked_value = true_value if is_true else rng.choice([v for v in values if v != true_value])
    label = "true" if is_true else "false"
    instruction = (f"Please answer the following question with true or false, question: "
                   f"{question.format(asked_value)}?\n\nAnswer format: true/false")
    # the asked value, the passage's fact, the asked value again (copied from after the first "asked"), then
    # the verdict on the two values three tokens apart, a table the corpus's "same or not" documents write out
    asked_word, told_word = compared_word(asked_value), compared_word(true_value)
    verdict = "yes" if asked_word == told_word else "no"
    rationale = f"the question asked {asked_word}. {CLAIM_FACTS[asked](name)}, asked {asked_word} {verdict}"
    return {"instruction": instruction, "input": passage, "output": answer(rationale, label), "answer": label}


GENERATORS = {
    "syn_boolq": syn_boolq,
    "syn_piqa": syn_piqa,
    "syn_arc_e": syn_arc_e,
    "syn_arc_c": syn_arc_c,
    "syn_obqa": syn_obqa,
}
