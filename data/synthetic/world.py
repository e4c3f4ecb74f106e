"""The small world the bundled data talks about: a knowledge base, and the arithmetic the math tasks may use.

Everything a commonsense task asks is a fact written in the tables below: materials and what they do, objects
and what they are made of and used for, animals (kind, legs, home, food, flight), kinds of animal and their
traits, places and what they are like. The pretraining corpus (corpus.py) states each fact in several wordings;
the tasks (tasks.py) ask about them, some one fact at a time, some by chaining two (an object -> its material
-> what the material does; an animal -> its kind -> the kind's trait; an animal -> its home -> what the home
is like). The world is deliberately closed and small so that a tiny model can learn all of it in minutes.

The arithmetic table bounds every calculation: a + b with a, b <= ADD_MAX; the matching differences; a * b with
a, b <= MUL_MAX; the matching quotients. The corpus writes the whole table out, the math tasks use only facts
from it (is_table_fact checks), so a model that has read the corpus has seen every step it must take.

Nothing here runs; corpus.py and tasks.py import it.
"""

import operator

# ----------------------------------------------------------------------------------------------------------
# Materials: the properties each one has (every property not listed, it lacks).
# Each property reads as a phrase after a singular subject: "Iron is pulled by a magnet." / "A nail ..."

MATERIAL_PROPERTIES = {
    # property: (phrase when it has it, phrase when it does not)
    "floats": ("floats on water", "sinks in water"),
    "magnetic": ("is pulled by a magnet", "is not pulled by a magnet"),
    "clear": ("lets light pass through", "blocks the light"),
    "burns": ("burns in a fire", "does not burn in a fire"),
    "conducts": ("carries electricity", "does not carry electricity"),
    "soft": ("is soft", "is hard"),
    "fragile": ("breaks when it falls", "does not break when it falls"),
    "melts": ("melts in the warm sun", "does not melt in the sun"),
}

MATERIALS = {
    "wood": {"floats", "burns"},
    "stone": set(),
    "iron": {"magnetic", "conducts"},
    "gold": {"conducts"},
    "glass": {"clear", "fragile"},
    "ice": {"floats", "clear", "fragile", "melts"},
    "rubber": {"floats", "soft"},
    "paper": {"floats", "burns", "soft"},
    "wool": {"burns", "soft"},
}

# What a person wants a material for, when it must have the property: "make a raft that floats".
MATERIAL_PURPOSES = {
    "floats": "build a raft that floats",
    "magnetic": "make something a magnet can pick up",
    "clear": "make a window you can see through",
    "burns": "start a campfire",
    "conducts": "make a wire for a lamp",
    "soft": "fill a soft pillow",
    "fragile": "make a cup that breaks easily",
    "melts": "make something that melts in the sun",
}

# ----------------------------------------------------------------------------------------------------------
# Objects: (name, material, what people use it to do). Every use is different, so "what would you use to
# <use>?" has one right object.

OBJECTS = [
    ("chair", "wood", "sit at a table"),
    ("pencil", "wood", "write a note"),
    ("raft", "wood", "cross a river"),
    ("brick", "stone", "build a wall"),
    ("statue", "stone", "decorate a park"),
    ("nail", "iron", "join two boards"),
    ("key", "iron", "open a lock"),
    ("pan", "iron", "fry an egg"),
    ("ring", "gold", "decorate a finger"),
    ("coin", "gold", "pay at a shop"),
    ("window", "glass", "let light into a room"),
    ("jar", "glass", "keep jam fresh"),
    ("mirror", "glass", "look at a face"),
    ("ice cube", "ice", "cool a drink"),
    ("ball", "rubber", "play catch"),
    ("boot", "rubber", "walk in the rain"),
    ("book", "paper", "read a story"),
    ("kite", "paper", "fly in the wind"),
    ("sweater", "wool", "keep warm in winter"),
    ("scarf", "wool", "keep a neck warm"),
]

# ----------------------------------------------------------------------------------------------------------
# Places and what they are like.

PLACE_PROPERTIES = {
    # property: (fact about the place, what an animal living there is said to do)
    "hot": ("is a hot place", "lives in a hot place"),
    "cold": ("is a cold place", "lives in a cold place"),
    "dry": ("is a dry place", "lives in a dry place"),
    "dark": ("is a dark place", "lives in a dark place"),
    "water": ("is full of water", "lives in water"),
    "trees": ("has many trees", "lives among many trees"),
}

PLACES = {
    "forest": {"trees"},
    "jungle": {"hot", "trees"},
    "desert": {"hot", "dry"},
    "ocean": {"water"},
    "pond": {"water"},
    "arctic": {"cold"},
    "mountain": {"cold"},
    "cave": {"dark"},
    "farm": set(),
}

# ----------------------------------------------------------------------------------------------------------
# Kinds of animal and the traits a kind has (every animal of the kind has them, no other animal does).

KIND_PLURALS = {
    "bird": "birds", "fish": "fish", "mammal": "mammals", "insect": "insects",
    "reptile": "reptiles", "amphibian": "amphibians", "arachnid": "arachnids",
}

KIND_TRAITS = {
    # trait: (phrase when it has it, phrase when it does not, kinds that have it)
    "feathers": ("has feathers", "has no feathers", {"bird"}),
    "eggs": ("lays eggs", "does not lay eggs", {"bird", "fish", "reptile", "insect", "amphibian", "arachnid"}),
    "milk": ("feeds its babies milk", "does not feed its babies milk", {"mammal"}),
    "gills": ("breathes with gills", "does not breathe with gills", {"fish"}),
    "scales": ("is covered in scales", "is not covered in scales", {"fish", "reptile"}),
}

# ----------------------------------------------------------------------------------------------------------
# Animals: (name, plural, kind, legs, home, food, can fly).

ANIMALS = [
    ("eagle", "eagles", "bird", 2, "mountain", "mice", True),
    ("owl", "owls", "bird", 2, "forest", "mice", True),
    ("penguin", "penguins", "bird", 2, "arctic", "fish", False),
    ("duck", "ducks", "bird", 2, "pond", "plants", True),
    ("hen", "hens", "bird", 2, "farm", "seeds", False),
    ("parrot", "parrots", "bird", 2, "jungle", "fruit", True),
    ("shark", "sharks", "fish", 0, "ocean", "fish", False),
    ("goldfish", "goldfish", "fish", 0, "pond", "plants", False),
    ("cow", "cows", "mammal", 4, "farm", "grass", False),
    ("camel", "camels", "mammal", 4, "desert", "leaves", False),
    ("bear", "bears", "mammal", 4, "forest", "fish", False),
    ("tiger", "tigers", "mammal", 4, "jungle", "meat", False),
    ("goat", "goats", "mammal", 4, "mountain", "grass", False),
    ("polar bear", "polar bears", "mammal", 4, "arctic", "meat", False),
    ("whale", "whales", "mammal", 0, "ocean", "fish", False),
    ("bat", "bats", "mammal", 2, "cave", "insects", True),
    ("bee", "bees", "insect", 6, "farm", "nectar", True),
    ("snake", "snakes", "reptile", 0, "desert", "mice", False),
    ("frog", "frogs", "amphibian", 4, "pond", "insects", False),
    ("spider", "spiders", "arachnid", 8, "cave", "insects", False),
]

FOODS = sorted({animal[5] for animal in ANIMALS})
LEG_COUNTS = (0, 2, 4, 6, 8)  # the legs an animal can have, and the tasks ask about

# ----------------------------------------------------------------------------------------------------------
# People, the things they count, and where they keep them: the cast of the math stories.

PEOPLE = [  # (name, pronoun)
    ("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"), ("Max", "he"), ("Zoe", "she"),
    ("Leo", "he"), ("Ivy", "she"), ("Finn", "he"), ("Nora", "she"), ("Jack", "he"), ("Ella", "she"),
]
THINGS = ["apples", "pears", "eggs", "marbles", "stickers", "cookies", "pens", "shells", "stamps", "cards"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("pack", "packs")]

# ----------------------------------------------------------------------------------------------------------
# The arithmetic table.

ADD_MAX = 30  # a + b for 0 <= a, b <= ADD_MAX, and the differences those sums give
MUL_MAX = 10  # a * b for 1 <= a, b <= MUL_MAX, and the quotients those products give


def is_table_fact(a, op, b):
    """Whether `a op b` is in the arithmetic table (with a whole, non-negative result)."""
    if op == "+":
        return 0 <= a <= ADD_MAX and 0 <= b <= ADD_MAX
    if op == "-":
        return 0 <= b <= ADD_MAX and 0 <= a - b <= ADD_MAX
    if op == "*":
        return 1 <= a <= MUL_MAX and 1 <= b <= MUL_MAX
    if op == "/":
        return 1 <= b <= MUL_MAX and a % b == 0 and 1 <= a // b <= MUL_MAX
    raise ValueError(f"unknown operator {op!r}")


def table_facts():
    """Every fact of the table as (a, op, b), in a fixed order."""
    facts = []
    for a in range(ADD_MAX + 1):
        for b in range(ADD_MAX + 1):
            facts.append((a, "+", b))
            facts.append((a + b, "-", b))
    for a in range(1, MUL_MAX + 1):
        for b in range(1, MUL_MAX + 1):
            facts.append((a, "*", b))
            facts.append((a * b, "/", b))
    return facts


OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def apply(a, op, b):
    """The result of a op b (whole numbers: division is exact in the table)."""
    return OPERATIONS[op](a, b)


# ----------------------------------------------------------------------------------------------------------
# Small helpers for writing sentences about the world.

def article(noun):
    """'a' or 'an' for the noun."""
    return "an" if noun[0] in "aeiou" else "a"


def with_article(noun):
    """The noun with its indefinite article: 'an owl', 'a nail'."""
    return f"{article(noun)} {noun}"


def material_has(material, prop):
    return prop in MATERIALS[material]


def object_has(obj, prop):
    """An object has a property through its material (the two-fact chain)."""
    return material_has(OBJECT_MATERIAL[obj], prop)


def animal_has_trait(animal, trait):
    """An animal has a trait through its kind (the two-fact chain)."""
    return ANIMAL[animal]["kind"] in KIND_TRAITS[trait][2]


def animal_lives_where(animal, prop):
    """An animal lives in a place with the property through its home (the two-fact chain)."""
    return prop in PLACES[ANIMAL[animal]["home"]]


OBJECT_MATERIAL = {name: material for name, material, _ in OBJECTS}
OBJECT_USE = {name: use for name, _, use in OBJECTS}
ANIMAL = {
    name: dict(plural=plural, kind=kind, legs=legs, home=home, food=food, flies=flies)
    for name, plural, kind, legs, home, food, flies in ANIMALS
}


# ----------------------------------------------------------------------------------------------------------
# Facts as short lower-case sentences, in the corpus's words: what the commonsense rationales write about
# each option, and what the corpus's numbered lists practise looking up.

def material_phrase(material, prop):
    """'floats on water' or 'sinks in water': the material's side of a property."""
    has, has_not = MATERIAL_PROPERTIES[prop]
    return has if material_has(material, prop) else has_not


def fact_material(material, prop):
    return f"{material} {material_phrase(material, prop)}"  # "wood floats on water"


def fact_flight(name):
    return f"the {name} {'can' if ANIMAL[name]['flies'] else 'cannot'} fly"


def fact_kind(name):
    return f"the {name} is {with_article(ANIMAL[name]['kind'])}"


def fact_legs(name):
    return f"the {name} has {ANIMAL[name]['legs']} legs"


def fact_food(name):
    return f"the {name} eats {ANIMAL[name]['food']}"


def fact_home(name):
    return f"the {name} lives in the {ANIMAL[name]['home']}"


def fact_made_of(obj):
    return f"the {obj} is made of {OBJECT_MATERIAL[obj]}"


def fact_use(obj):
    return f"{with_article(obj)} is used to {OBJECT_USE[obj]}"


def named_with_fact(name, fact):
    """A thing as a list line names it, then its fact: "bee, the bee is an insect"; the fact alone when it
    already starts with the name ("gold sinks in water")."""
    return fact if fact.startswith(name) else f"{name}, {fact}"
