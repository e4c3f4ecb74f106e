"""Generators for the six synthetic math tasks, stand-ins for the paper's AddSub, SingleEq, MultiArith, GSM8K,
AQuA and SVAMP (LLM-Adapters' math suite). Each generator takes a random.Random and returns one item in the
LLM-Adapters format: the question in "instruction", "input" empty, a worked "output" ending in the answer, and
"answer" (a number as a string; a letter for syn_aqua).

What each one exercises:
    syn_addsub      one addition or subtraction in a story                         "12 + 7 = 19. The answer is 19."
    syn_singleeq    one equation: a product, a quotient, or an unknown start value
    syn_multiarith  two steps mixing the four operations
    syn_gsm8k       three or four steps, each worked on its own line in words, some needing a fact of the world
                    (how many legs a hen has)
    syn_aqua        five-way multiple choice (A-E): the steps, the choices numbered 1-5, the value found with
                    its number, the answer
    syn_svamp       variations of one-step problems: distractor numbers, "fewer than", "more than", the
                    question first, the relation turned around

Every step of every output is one fact of world.py's arithmetic table written "a op b = c", so a model that has
read the corpus has seen each of them; step() checks.
"""

from data.synthetic import world
from data.synthetic.world import ADD_MAX, ANIMAL, CONTAINERS, MUL_MAX, PEOPLE, THINGS


def step(a, op, b):
    """The text 'a op b = c' and c, for a fact of the arithmetic table (anything else is a generator bug)."""
    if not world.is_table_fact(a, op, b):
        raise AssertionError(f"{a} {op} {b} is outside the arithmetic table")
    result = world.apply(a, op, b)
    return f"{a} {op} {b} = {result}", result


def difference(rng):
    """(a, b) for a subtraction a - b in the table, a at least 5."""
    a = rng.randint(5, 2 * ADD_MAX)
    return a, rng.randint(max(1, a - ADD_MAX), min(a - 1, ADD_MAX))


def compact(steps, answer):
    """'5 * 3 = 15. 15 - 4 = 11. The answer is 11.'"""
    return " ".join(text + "." for text in steps) + f" The answer is {answer}."


def item(question, output, answer):
    return {"instruction": question, "input": "", "output": output, "answer": str(answer)}


def cast(rng, n=2):
    """n different people as (name, pronoun, Pronoun, object pronoun)."""
    people = rng.sample(PEOPLE, n)
    return [(name, he, he.capitalize(), "him" if he == "he" else "her") for name, he in people]


def syn_addsub(rng):
    (name, he, He, _), (other, *_) = cast(rng)
    things = rng.choice(THINGS)
    container = rng.choice(CONTAINERS)[0]
    form = rng.randrange(4)
    if form < 2:
        a, b = rng.randint(2, ADD_MAX), rng.randint(2, ADD_MAX)
        text, answer = step(a, "+", b)
        question = [
            f"{name} had {a} {things}. {He} found {b} more {things}. How many {things} does {name} have now?",
            f"{name} picked {a} {things} and {other} picked {b} {things}. How many {things} did they pick in all?",
        ][form]
    else:
        a, b = difference(rng)
        text, answer = step(a, "-", b)
        question = [
            f"{name} had {a} {things}. {He} gave {b} {things} to {other}. How many {things} does {name} have left?",
            f"There were {a} {things} in a {container}. {name} took out {b} of them. "
            f"How many {things} are in the {container} now?",
        ][form - 2]
    return item(question, compact([text], answer), answer)


def syn_singleeq(rng):
    (name, he, He, _), = cast(rng, 1)
    things = rng.choice(THINGS)
    container, containers = rng.choice(CONTAINERS)
    form = rng.randrange(4)
    if form == 0:
        m, k = rng.randint(2, MUL_MAX), rng.randint(2, MUL_MAX)
        text, answer = step(m, "*", k)
        question = (f"Each {container} holds {k} {things}. {name} has {m} {containers}. "
                    f"How many {things} does {name} have?")
    elif form == 1:
        k, each = rng.randint(2, MUL_MAX), rng.randint(1, MUL_MAX)
        text, answer = step(k * each, "/", k)
        question = (f"{name} shares {k * each} {things} equally among {k} friends. "
                    f"How many {things} does each friend get?")
    elif form == 2:
        start, found = rng.randint(1, ADD_MAX), rng.randint(1, ADD_MAX)
        text, answer = step(start + found, "-", found)
        question = (f"{name} had some {things}. After {he} found {found} more, {he} had {start + found} {things}. "
                    f"How many {things} did {name} have at first?")
    else:
        given, left = rng.randint(1, ADD_MAX), rng.randint(1, ADD_MAX)
        text, answer = step(left, "+", given)
        question = (f"{name} gave away {given} {things} and has {left} {things} left. "
                    f"How many {things} did {name} have at first?")
    return item(question, compact([text], answer), answer)


def syn_multiarith(rng):
    (name, he, He, _), (other, *_) = cast(rng)
    things = rng.choice(THINGS)
    container, containers = rng.choice(CONTAINERS)
    form = rng.randrange(4)
    if form == 0:
        k = rng.randint(2, MUL_MAX)
        m = rng.randint(2, min(MUL_MAX, 2 * ADD_MAX // k))  # m * k - c must stay in the table
        first, x = step(m, "*", k)
        c = rng.randint(max(1, x - ADD_MAX), min(x - 1, ADD_MAX))
        second, answer = step(x, "-", c)
        question = (f"{name} has {m} {containers} with {k} {things} in each {container}. "
                    f"{He} gives {c} {things} to {other}. How many {things} does {name} have left?")
    elif form == 1:
        k = rng.randint(2, MUL_MAX)
        each = rng.randint(1, min(MUL_MAX, 2 * ADD_MAX // k))
        x = k * each
        a = rng.randint(max(1, x - ADD_MAX), min(x - 1, ADD_MAX))
        first, _ = step(a, "+", x - a)
        second, answer = step(x, "/", k)
        question = (f"{name} had {a} {things} and found {x - a} more. Then {he} shared them equally among {k} "
                    f"friends. How many {things} did each friend get?")
    elif form == 2:
        a, b = difference(rng)
        first, x = step(a, "-", b)
        c = rng.randint(1, ADD_MAX)
        second, answer = step(x, "+", c)
        question = (f"{name} had {a} {things}. {He} gave {b} of them to {other} and then found {c} more. "
                    f"How many {things} does {name} have now?")
    else:
        k = rng.randint(2, 5)
        m = rng.randint(2, min(MUL_MAX, ADD_MAX // k))
        first, x = step(m, "*", k)
        c = rng.randint(1, ADD_MAX)
        second, answer = step(x, "+", c)
        question = (f"{name} buys {m} {containers} of {things} with {k} {things} in each {container} and already "
                    f"has {c} {things}. How many {things} does {name} have in all?")
    return item(question, compact([first, second], answer), answer)


def syn_gsm8k(rng):
    """Several steps, each worked on its own line: 'Sam buys 3 * 4 = 12 stickers.'"""
    (name, he, He, him), (other, *_) = cast(rng)
    things = rng.choice(THINGS)
    form = rng.randrange(3)
    if form == 0:
        k = rng.randint(2, 5)
        m = rng.randint(2, min(MUL_MAX, ADD_MAX // k))
        s1, x = step(m, "*", k)
        c = rng.randint(1, ADD_MAX)
        s2, y = step(x, "+", c)
        d = rng.randint(max(1, y - ADD_MAX), min(y - 1, ADD_MAX))
        s3, z = step(y, "-", d)
        question = (f"{name} buys {m} packs of {things} with {k} {things} in each pack. {other} gives {him} {c} "
                    f"more {things}. {name} then uses {d} {things} to make a gift. ")
        lines = [f"{name} buys {s1} {things}.", f"With the {things} from {other}, {he} has {s2} {things}.",
                 f"After making the gift, {he} has {s3} {things}."]
        divisors = [q for q in range(2, MUL_MAX + 1) if z % q == 0 and z // q <= MUL_MAX]
        if divisors and rng.random() < 0.5:
            q = rng.choice(divisors)
            s4, z = step(z, "/", q)
            question += f"{He} shares the rest equally among {q} friends. How many {things} does each friend get?"
            lines.append(f"Each friend gets {s4} {things}.")
        else:
            question += f"How many {things} does {name} have left?"
    elif form == 1:
        wage = rng.randint(2, MUL_MAX)
        days = rng.randint(2, min(MUL_MAX, 2 * ADD_MAX // wage))
        s1, x = step(wage, "*", days)
        # at least 2 dollars for each (no "1 dollars")
        spent = rng.randint(max(4, x - ADD_MAX), min(x, ADD_MAX))
        book = rng.randint(2, spent - 2)
        lunch = spent - book
        s2, y = step(book, "+", lunch)
        s3, z = step(x, "-", y)
        question = (f"{name} earns {wage} dollars each day for {days} days. {He} spends {book} dollars on a book "
                    f"and {lunch} dollars on lunch. How many dollars does {name} have left?")
        lines = [f"{name} earns {s1} dollars.", f"{He} spends {s2} dollars.", f"{He} has {s3} dollars left."]
    else:
        first, second = rng.sample([n for n, animal in ANIMAL.items() if animal["legs"] > 0], 2)
        legs1, legs2 = ANIMAL[first]["legs"], ANIMAL[second]["legs"]
        n1 = rng.randint(1, min(MUL_MAX, ADD_MAX // legs1))
        n2 = rng.randint(1, min(MUL_MAX, ADD_MAX // legs2))
        s1, x = step(n1, "*", legs1)
        s2, y = step(n2, "*", legs2)
        s3, z = step(x, "+", y)
        plural1, plural2 = ANIMAL[first]["plural"], ANIMAL[second]["plural"]
        question = (f"{name} counts {n1} {plural1} and {n2} {plural2}. "
                    f"How many legs do the animals have in all?")
        lines = [f"The {plural1} have {s1} legs.", f"The {plural2} have {s2} legs.",
                 f"Together they have {s3} legs."]
    return item(question.strip(), "\n".join(lines + [f"The answer is {z}."]), z)


LETTERS = "ABCDE"


def answer_choices(rng, correct):
    """(five values in even steps, the position of the correct one among them). The position is uniform,
    except that an answer below 4 cannot have four smaller options before it."""
    position = rng.choice([p for p in range(5) if p <= correct])
    gap = rng.choice([g for g in (1, 2, 3, 5) if correct - position * g >= 0])
    return [correct + (i - position) * gap for i in range(5)], position


def syn_aqua(rng):
    """A question, 'Answer Choices: (A) .. (E) ..', the steps, every choice on a line with its number, the value
    found with its number, 'The answer is (C).': "6 * 7 = 42.\n1: 40 1\n2: 41 2\n3: 42 3\n4: 43 4\n5: 44 5. 42 3.
    The answer is (C)."

    LLM-Adapters scores AQuA by the first capital A-E anywhere in the output, so the rationale holds numbers
    and lower-case words only: the letter at the end is the first one a scorer meets."""
    (name, *_), (other, *_) = cast(rng)
    form = rng.randrange(5)
    if form == 0:
        age = rng.randint(2, ADD_MAX - 1)
        older, years = rng.randint(1, ADD_MAX - age), rng.randint(1, ADD_MAX)
        s1, x = step(age, "+", older)
        s2, answer = step(x, "+", years)
        steps = [s1, s2]
        question = f"{name} is {age} years old. {other} is {older} years older than {name}. " \
                   f"How old will {other} be in {years} years?"
    elif form == 1:
        speed, hours = rng.randint(2, MUL_MAX), rng.randint(2, MUL_MAX)
        s1, answer = step(speed, "*", hours)
        steps = [s1]
        vehicle = rng.choice(["bus", "train", "boat", "bike", "cart"])
        question = f"A {vehicle} travels {speed} km each hour. How many km does it travel in {hours} hours?"
    elif form == 2:
        mean = rng.randint(1, min(MUL_MAX, ADD_MAX // 3))
        a, b = rng.randint(0, 3 * mean), rng.randint(0, 3 * mean)
        if a + b > 3 * mean:
            a, b = 3 * mean - a, 3 * mean - b
        c = 3 * mean - a - b
        s1, x = step(a, "+", b)
        s2, y = step(x, "+", c)
        s3, answer = step(y, "/", 3)
        steps = [s1, s2, s3]
        question = f"What is the average of {a}, {b} and {c}?"
    elif form == 3:
        price = rng.randint(2, MUL_MAX)
        count = rng.randint(2, min(MUL_MAX, ADD_MAX // price))
        s1, cost = step(count, "*", price)
        paid = rng.randint(cost + 1, cost + ADD_MAX)
        s2, answer = step(paid, "-", cost)
        steps = [s1, s2]
        question = f"{name} buys {count} pens at {price} dollars each and pays with {paid} dollars. " \
                   f"How much change does {name} get?"
    else:
        larger = rng.randint(2, MUL_MAX)
        smaller = rng.randint(1, larger - 1)
        s1, x = step(larger + smaller, "+", larger - smaller)
        s2, answer = step(x, "/", 2)
        steps = [s1, s2]
        question = f"The sum of two numbers is {larger + smaller} and their difference is {larger - smaller}. " \
                   f"What is the larger number?"
    values, position = answer_choices(rng, answer)
    letter = LETTERS[position]
    choices = " ".join(f"({option}) {value}" for option, value in zip(LETTERS, values))
    # then every choice on a line, numbered 1-5 as the commonsense options are (no letters: the first capital A-E
    # of the output must be the answer's), and the value found with the number that followed it there (a copy
    # an induction head makes); lettered lines ("(c) 12 c") were looked up right a quarter of the time
    read = "\n".join(f"{i}: {value} {i}" for i, value in enumerate(values, 1))
    lookup = f"{read}. {answer} {position + 1}"
    output = " ".join(text + "." for text in steps) + f"\n{lookup}. The answer is ({letter})."
    return {"instruction": f"{question} Answer Choices: {choices}", "input": "", "output": output, "answer": letter}


def syn_svamp(rng):
    """One step, but the story varies: an irrelevant number, the relation turned around, the question first."""
    (name, he, He, _), (other, *_) = cast(rng)
    things, extra_things = rng.sample(THINGS, 2)
    form = rng.randrange(6)
    a = rng.randint(5, ADD_MAX)
    b = rng.randint(1, a - 1)
    c = rng.randint(2, ADD_MAX)
    if form == 0:
        text, answer = step(a, "+", b)
        question = (f"{name} has {a} {things} and {c} {extra_things}. {He} buys {b} more {things}. "
                    f"How many {things} does {name} have now?")
    elif form == 1:
        text, answer = step(a, "-", b)
        question = (f"{name} had {a} {things} and {c} {extra_things}. {He} gave away {b} {things}. "
                    f"How many {things} does {name} have left?")
    elif form == 2:
        text, answer = step(a, "-", b)
        question = (f"{name} has {a} {things}. {other} has {b} fewer {things} than {name}. "
                    f"How many {things} does {other} have?")
    elif form == 3:
        text, answer = step(a, "+", b)
        question = (f"{other} has {b} more {things} than {name}, and {name} has {a} {things}. "
                    f"How many {things} does {other} have?")
    elif form == 4:
        text, answer = step(a, "-", b)
        question = (f"{name} has {a} {things}, which is {b} more than {other} has. "
                    f"How many {things} does {other} have?")
    else:
        text, answer = step(a, "-", b)
        question = (f"{name} has {a} {things} and {other} has {b} {things}. "
                    f"How many more {things} does {name} have than {other}?")
    if form >= 2 and rng.random() < 0.5:
        # an irrelevant number, told before the question
        distractor = f"{other} also has {c} {extra_things}."
        body, ask = question.rsplit(". ", 1)
        question = f"{body}. {distractor} {ask}"
    return item(question, compact([text], answer), answer)


GENERATORS = {
    "syn_addsub": syn_addsub,
    "syn_singleeq": syn_singleeq,
    "syn_multiarith": syn_multiarith,
    "syn_gsm8k": syn_gsm8k,
    "syn_aqua": syn_aqua,
    "syn_svamp": syn_svamp,
}
