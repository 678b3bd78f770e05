"""The forgetting bench's data, generated with a seed (nothing from a hub): the target tasks of
its two regimes, the retention items and the drift prompts, and how a reply's answer is read.

- paper: two-digit addition, a task the base model already half does (SmolLM2-135M-Instruct: about
  35-40 % before training), with the answer format stated in every prompt, as the STM paper's
  MBPP and MATH prompts state theirs; the ground truth is written in a style of its own (tens, then
  ones), not the model's, as human-written data is.
- stress: two-step word problems whose answers reason in words and close with "The answer is N", a
  format the prompt never states and the base model does not write (about 7 % before training).
"""

from __future__ import annotations

import random
import re

REGIMES = ("paper", "stress")


# -- paper: two-digit addition ------------------------------------------------------------------

ADDITION_PROMPT = "What is {a} + {b}? Explain briefly, then end with 'Answer: N'."


def addition_row(a: int, b: int, row_id: str) -> dict:
    tens, ones = a // 10 * 10 + b // 10 * 10, a % 10 + b % 10
    answer = (f"Tens first: {a // 10 * 10} + {b // 10 * 10} = {tens}. Then the ones: {a % 10} + {b % 10} = {ones}. "
              f"{tens} + {ones} = {a + b}.\nAnswer: {a + b}")
    return {"id": row_id, "answer": a + b,
            "messages": [{"role": "user", "content": ADDITION_PROMPT.format(a=a, b=b)},
                         {"role": "assistant", "content": answer}]}


def addition_splits(sizes: tuple[int, int, int], seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, validation and test rows: disjoint (a, b) pairs, a in 10-69 and b in 10-29."""
    pairs = [(a, b) for a in range(10, 70) for b in range(10, 30)]
    random.Random(seed).shuffle(pairs)
    if sum(sizes) > len(pairs):
        raise SystemExit(f"the addition task has {len(pairs)} distinct problems: ask for fewer rows")
    splits, start = [], 0
    for name, size in zip(("train", "val", "test"), sizes):
        splits.append([addition_row(a, b, f"add-{name}-{k:04d}") for k, (a, b) in enumerate(pairs[start:start + size])])
        start += size
    return tuple(splits)


# -- stress: two-step word problems ---------------------------------------------------------------

NAMES = ["Lily", "Omar", "Sara", "Ben", "Mia", "Ravi", "Ana", "Leo", "Zoe", "Sam", "Nina", "Tom", "Ivy", "Max", "Ella",
         "Kai"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "cards", "books", "shells", "coins"]


def word_problem(rng: random.Random) -> tuple[str, str, int]:
    """One two-step word problem: (question, an answer that reasons in words, the final number)."""
    name, item, kind = rng.choice(NAMES), rng.choice(ITEMS), rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randint(10, 40), rng.randint(2, 9), rng.randint(2, 9)
        t = a + b * c
        q = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each. How many {item} does {name} have now?"
        r = (f"Each pack has {c} {item}, so {b} packs hold {b} x {c} = {b * c} {item}. Together with the {a} {item} "
             f"from before, {name} has {a} + {b * c} = {t} {item}. The answer is {t}.")
    elif kind == 1:
        b, c = rng.randint(5, 30), rng.randint(5, 30)
        a = b + c + rng.randint(3, 40)
        t = a - b - c
        q = f"A shop had {a} {item}. It sold {b} in the morning and {c} in the afternoon. How many {item} are left?"
        r = (f"The shop sold {b} + {c} = {b + c} {item} in total. It started with {a}, so {a} - {b + c} = {t} "
             f"{item} are left. The answer is {t}.")
    elif kind == 2:
        a, b, c = rng.randint(3, 12), rng.randint(2, 9), rng.randint(5, 30)
        t = a * b + c
        q = f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages did {name} read in all?"
        r = (f"In {b} days {name} reads {b} x {a} = {a * b} pages. Adding the last {c} pages gives {a * b} + {c} = "
             f"{t} pages. The answer is {t}.")
    elif kind == 3:
        b, share, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 12)
        a, t = b * share, share + c
        q = (f"{a} {item} are shared equally among {b} children. Then each child gets {c} more. "
             f"How many {item} does each child have?")
        r = (f"Sharing {a} {item} among {b} children gives each child {a} / {b} = {share}. With {c} more, each child "
             f"has {share} + {c} = {t} {item}. The answer is {t}.")
    else:
        a, b = rng.randint(20, 60), rng.randint(3, 19)
        c = rng.randint(3, 30)
        t = a - b + c
        q = f"A bus has {a} passengers. At the first stop {b} get off and {c} get on. How many passengers are on the bus now?"
        r = (f"After {b} get off, {a} - {b} = {a - b} passengers remain. Then {c} get on, so {a - b} + {c} = {t} "
             f"passengers are on the bus. The answer is {t}.")
    return q, r, t


def word_problem_rows(count: int, seed: int, prefix: str, exclude: set[str] = frozenset()) -> list[dict]:
    """`count` distinct word problems whose questions are not in `exclude`."""
    rng, rows, seen = random.Random(seed), [], set(exclude)
    while len(rows) < count:
        question, answer, final = word_problem(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"{prefix}-{len(rows):04d}", "answer": final,
                     "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def word_problem_splits(sizes: tuple[int, int, int], seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, validation and test rows from seeds of their own, no question in two splits."""
    splits, seen = [], set()
    for k, (name, size) in enumerate(zip(("train", "val", "test"), sizes)):
        rows = word_problem_rows(size, seed * 1000 + 1 + k, f"arith-{name}", seen)
        seen |= {row["messages"][0]["content"] for row in rows}
        splits.append(rows)
    return tuple(splits)


def target_splits(regime: str, sizes: tuple[int, int, int], seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    return addition_splits(sizes, seed) if regime == "paper" else word_problem_splits(sizes, seed)


# -- reading a reply's answer ----------------------------------------------------------------------

# "Answer: 72" (paper) or "The answer is 51" (stress).
ANSWER = re.compile(r"answer(?:\s+is|\s*:)\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*")


def final_number(text: str) -> int | None:
    """The answer a reply gives: the number after its last "Answer:" or "the answer is", else its last number."""
    found = ANSWER.findall(text) or NUMBER.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


# -- retention: multiple choice on what the model knew before --------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Russia": "Moscow", "Egypt": "Cairo", "England": "London", "Canada": "Ottawa", "Australia": "Canberra",
    "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Turkey": "Ankara", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Kenya": "Nairobi", "Thailand": "Bangkok", "South Korea": "Seoul", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Hungary": "Budapest", "Cuba": "Havana", "Iran": "Tehran", "the Philippines": "Manila",
    "India": "New Delhi", "Mexico": "Mexico City", "Brazil": "Brasilia", "Chile": "Santiago", "Scotland": "Edinburgh",
    "Czechia": "Prague",
}
ANTONYMS = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "open": "closed", "tall": "short",
    "rich": "poor", "early": "late", "hard": "soft", "wet": "dry", "full": "empty", "strong": "weak", "loud": "quiet",
    "thick": "thin", "high": "low", "win": "lose", "push": "pull", "buy": "sell", "day": "night", "first": "last",
    "left": "right", "love": "hate", "before": "after", "inside": "outside", "heavy": "light", "young": "old",
    "clean": "dirty", "true": "false", "above": "below", "give": "take", "start": "finish", "friend": "enemy",
    "black": "white", "north": "south", "east": "west", "summer": "winter", "alive": "dead", "arrive": "leave",
    "accept": "refuse",
}
CATEGORIES = {
    "fruit": ["apple", "banana", "orange", "grape", "pear", "cherry", "mango", "lemon", "peach", "plum"],
    "animal": ["dog", "horse", "tiger", "rabbit", "elephant", "lion", "sheep", "monkey", "zebra", "bear"],
    "color": ["red", "blue", "green", "yellow", "purple", "pink", "brown", "orange", "gray", "white"],
    "vehicle": ["car", "bus", "truck", "bicycle", "train", "motorcycle", "airplane", "boat", "taxi", "tractor"],
    "musical instrument": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "harp", "cello", "banjo",
                           "saxophone"],
    "body part": ["hand", "foot", "nose", "ear", "knee", "elbow", "finger", "shoulder", "ankle", "wrist"],
}


def retention_items(count: int, seed: int) -> list[dict]:
    """Multiple-choice items with four choices, one right; a third each of capitals, antonyms and
    categories, the distractors drawn from the other items' answers."""
    rng = random.Random(seed)

    def choices(right: str, pool: list[str]) -> list[str]:
        options = [right, *rng.sample(sorted(set(pool) - {right}), 3)]
        rng.shuffle(options)
        return options

    capitals = [{"question": f"What is the capital of {country}?", "choices": choices(city, list(CAPITALS.values())),
                 "answer": city} for country, city in CAPITALS.items()]
    opposites = [{"question": f"What is the opposite of \"{word}\"?", "choices": choices(other, list(ANTONYMS.values())),
                  "answer": other} for word, other in ANTONYMS.items()]
    kinds = []
    names = sorted(CATEGORIES)
    for index in range(len(CAPITALS)):
        kind = names[index % len(names)]
        right = CATEGORIES[kind][(index // len(names)) % len(CATEGORIES[kind])]
        others = [word for name in names if name != kind for word in CATEGORIES[name] if word not in CATEGORIES[kind]]
        kinds.append({"question": f"Which of these is a {kind}?", "choices": choices(right, others), "answer": right})
    items = [item for group in zip(capitals, opposites, kinds) for item in group]
    if count > len(items):
        raise SystemExit(f"--retention-items: at most {len(items)}")
    return items[:count]


# -- drift: the base model's own answers to general prompts ----------------------------------------

TOPICS = ["the ocean", "coffee", "bicycles", "the moon", "volcanoes", "libraries", "rain", "chess", "honey", "trains",
          "gardening", "music", "photosynthesis", "the internet", "friendship", "mountains", "bread", "electricity",
          "birds", "recycling", "sleep", "maps", "the sun", "football", "clouds", "bees", "paper", "money", "winter",
          "cats", "dogs", "airplanes", "computers", "tea", "rivers", "deserts", "cheese", "robots", "forests", "snow"]
PROMPT_FORMS = ["Write one sentence about {topic}.", "What is interesting about {topic}? Answer briefly.",
                "Give one practical tip related to {topic}."]


def drift_prompts(count: int) -> list[str]:
    """General prompts that have nothing to do with arithmetic, in a fixed order."""
    prompts = [form.format(topic=topic) for form in PROMPT_FORMS for topic in TOPICS]
    if count > len(prompts):
        raise SystemExit(f"--drift-prompts: at most {len(prompts)}")
    return prompts[:count]
