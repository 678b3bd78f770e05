"""Does training on ftprep's output forget less? The STM paper's experiment at small scale.

Fine-tunes one model (full fine-tuning, TRL's SFTTrainer) on a target task under five conditions
with the same steps, learning rate, batch and seeds, and measures before and after:

- target: exact final answer under greedy decoding on held-out arithmetic word problems whose
  answers reason in words ("... so 4 x 7 = 28 apples. ... The answer is 51."), generated with a seed;
- retention: multiple choice (capitals, antonyms, "which of these is a fruit"), scored by the
  log-likelihood of each choice as the assistant's answer; chance is 25 %;
- drift: mean log-probability per token, under the trained model, of the base model's own greedy
  answers to general prompts (0 change = nothing forgotten there; lower = drifted away).

Conditions: base (no training), sft (`ftprep mask --strategy none`: every assistant token), stm
(`--strategy threshold`, tau 2.5), regen (`ftprep regen --verify math`, then score and mask with
the default threshold strategy, as the README shows), soft (`--strategy soft`, trained with
`ftprep.trainer.with_token_weights`). Every condition trains through the same
`with_token_weights(SFTTrainer)` and `TokenWeightCollator`: without a `loss_weights` column that
is the plain token-averaged SFT loss over the supervised tokens.

Run:
    python bench/forgetting.py --quick                 # one seed, fewer rows: about 7 min on 2 cores
    python bench/forgetting.py                         # the full run: 2 seeds, about 42 min on 2 cores
    python bench/forgetting.py --sweep-lr 3e-5,1e-4,3e-4 --quick   # plain SFT only, to pick the rate
    python bench/forgetting.py --model HF_ID_OR_FOLDER --device cuda    # a larger model on a GPU

Everything lands under --out (default out/forgetting[-quick]): data/ (the generated rows),
ftprep/ (the score, regen and mask outputs), base.json (the base model's evaluations and greedy
answers), runs/ (one JSON per trained condition and seed, with its loss curve), results.json and
forgetting.png. A rerun reuses all of it, so only what changed is recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("base", "sft", "stm", "regen", "soft")
TRAINED = CONDITIONS[1:]
MASK_OPTIONS = {  # ftprep mask settings per condition (regen: on the regenerated, rescored rows)
    "sft": {"strategy": "none"},
    "stm": {"strategy": "threshold", "threshold": 2.5},
    "regen": {"strategy": "threshold", "threshold": 2.5},
    "soft": {"strategy": "soft"},
}


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a run; the caches are keyed by it."""

    model: str = "smollm2-135m"
    train_rows: int = 400
    test_rows: int = 100
    retention_items: int = 120
    drift_prompts: int = 120
    steps: int = 50
    batch: int = 8
    learning_rate: float = 1e-4
    seeds: int = 2
    regen_n: int = 1  # one candidate per row: generation dominates the CPU time of the whole run
    regen_tokens: int = 96  # longest regen candidate (the reference answers take 40-60 tokens)
    answer_tokens: int = 96  # greedy budget for a target answer (the reference answers take 40-60)
    drift_tokens: int = 32  # length of the base model's greedy answers that drift scores
    data_seed: int = 0
    # Training in bf16 mixed precision and regen in bf16, where the hardware multiplies bf16
    # natively: on 2 EPYC cores a step of batch 8 takes 4.2 s against 7.4 s in float32, and regen
    # runs 1.8x faster. Set explicitly because TRL's SFTConfig turns bf16 on by itself (when fp16
    # is off), even on a CPU without it. Scoring follows ftprep's --dtype auto; the evaluations
    # stay float32.
    bf16: bool = False

    def data_key(self) -> str:
        """Names the ftprep outputs: they depend on the model and the rows, not on training."""
        fields = (self.model, self.train_rows, self.regen_n, self.regen_tokens, self.data_seed)
        if self.bf16:  # the regenerated rows depend on it (older caches stay valid for float32)
            fields += ("bf16",)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:8]

    def eval_key(self) -> str:
        fields = (self.model, self.test_rows, self.retention_items, self.drift_prompts, self.answer_tokens,
                  self.drift_tokens, self.data_seed)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:8]


FULL = Scale()
QUICK = Scale(train_rows=48, test_rows=40, retention_items=120, drift_prompts=100, steps=12, batch=4, seeds=1)


# -- data: generated with a seed, nothing from a hub --------------------------------------------

NAMES = ["Lily", "Omar", "Sara", "Ben", "Mia", "Ravi", "Ana", "Leo", "Zoe", "Sam", "Nina", "Tom", "Ivy", "Max", "Ella",
         "Kai"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "cards", "books", "shells", "coins"]


def _problem(rng: random.Random) -> tuple[str, str, int]:
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


def target_rows(count: int, seed: int, offset: int = 0) -> list[dict]:
    """`count` distinct word problems; train and test come from disjoint seeds and are de-duplicated."""
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < count:
        question, answer, final = _problem(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"arith-{offset + len(rows):04d}", "answer": final,
                     "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def split_target(scale: Scale) -> tuple[list[dict], list[dict]]:
    train = target_rows(scale.train_rows, seed=scale.data_seed * 1000 + 1)
    test_pool = target_rows(scale.test_rows * 2, seed=scale.data_seed * 1000 + 2, offset=100000)
    train_questions = {row["messages"][0]["content"] for row in train}
    test = [row for row in test_pool if row["messages"][0]["content"] not in train_questions][: scale.test_rows]
    return train, test


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


# -- evaluation --------------------------------------------------------------------------------


def prompt_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, the end-of-turn token included when reached), batched and left-padded."""
    import torch

    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    # Longest first so that a batch pads little; the answers go back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]):] = torch.as_tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        for row, i in enumerate(chunk):
            tokens = out[row, width:].tolist()
            cut = next((k + 1 for k, token in enumerate(tokens) if token in eos), len(tokens))
            answers[i] = tokens[:cut]
    return answers


def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_tokens: int = 4096) -> list[np.ndarray]:
    """log p(continuation token | prompt, earlier continuation tokens) for each (prompt, continuation)."""
    import torch

    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    result: list[np.ndarray] = [np.zeros(0, np.float32)] * len(pairs)
    start = 0
    while start < len(order):
        width = len(pairs[order[start]][0]) + len(pairs[order[start]][1])
        size = max(1, batch_tokens // width)
        chunk = order[start:start + size]
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = pairs[i][0] + pairs[i][1]
            ids[row, :len(seq)] = torch.as_tensor(seq)
            mask[row, :len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        for row, i in enumerate(chunk):
            prompt, continuation = pairs[i]
            result[i] = logprobs[row, len(prompt) - 1:len(prompt) - 1 + len(continuation)].numpy()
        start += size
    return result


ANSWER_IS = re.compile(r"answer is\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*")


def final_number(text: str) -> int | None:
    """The answer a reply gives: the number after its last "the answer is", else its last number."""
    found = ANSWER_IS.findall(text) or NUMBER.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


def evaluate_target(model, tokenizer, test: list[dict], max_new_tokens: int) -> dict:
    prompts = [prompt_ids(tokenizer, row["messages"][0]["content"]) for row in test]
    replies = [tokenizer.decode(answer, skip_special_tokens=True)
               for answer in greedy_answers(model, tokenizer, prompts, max_new_tokens)]
    correct = [final_number(reply) == row["answer"] for reply, row in zip(replies, test)]
    return {"accuracy": float(np.mean(correct)), "examples": [{"reply": reply, "answer": row["answer"]}
                                                              for reply, row in list(zip(replies, test))[:3]]}


def evaluate_retention(model, tokenizer, items: list[dict]) -> dict:
    """Accuracy of picking the choice with the highest log-likelihood as the whole assistant answer
    (its tokens and the end-of-turn token)."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
    pairs = []
    for item in items:
        prompt = prompt_ids(tokenizer, f"{item['question']} Answer with the word only.")
        pairs += [(prompt, tokenizer(choice, add_special_tokens=False)["input_ids"] + end) for choice in item["choices"]]
    totals = [float(logprobs.sum()) for logprobs in continuation_logprobs(model, pairs)]
    picked = [item["choices"][int(np.argmax(totals[4 * k:4 * k + 4]))] for k, item in enumerate(items)]
    return {"accuracy": float(np.mean([pick == item["answer"] for pick, item in zip(picked, items)]))}


def evaluate_drift(model, references: list[tuple[list[int], list[int]]]) -> dict:
    """Mean log-probability per token of the base model's greedy answers (over all their tokens)."""
    logprobs = np.concatenate(continuation_logprobs(model, references))
    return {"logprob": float(logprobs.mean()), "tokens": int(logprobs.size)}


def now() -> tuple[float, float]:
    """Wall and CPU clocks: on a shared machine the CPU time (all threads of this process) tells what
    a phase would take alone, wall / CPU being the share of the cores it got."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> dict:
    wall, cpu = now()
    return {"wall_s": round(wall - start[0], 1), "cpu_s": round(cpu - start[1], 1)}


# -- the ftprep side ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.is_file() and path.read_text() == text:
        return path  # unchanged: a new file time would make ftprep see other input and not resume
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _done(folder: Path) -> bool:
    return (folder / "ftprep.json").is_file() and (folder / "state.json").is_file()


def ftprep_step(function, source, folder: Path, **options) -> Path:
    """Run an ftprep command through its Python API unless its output is already complete (a killed
    run resumes where it stopped)."""
    if not _done(folder):
        function(str(source), output=str(folder), **options)
    return folder


def prepare_training_sets(scale: Scale, out: Path, train: list[dict], device: str, timings: dict,
                          conditions=CONDITIONS) -> dict[str, dict]:
    """score -> mask for sft, stm, soft; regen -> score -> mask for regen. Returns per condition the
    training folder and its mask stats."""
    import ftprep

    work = out / "ftprep" / scale.data_key()
    source = write_jsonl(work / "train.jsonl", [{"id": row["id"], "messages": row["messages"]} for row in train])
    common = {"model": scale.model, "device": device}
    started = now()
    scored = ftprep_step(ftprep.score, source, work / "scored", **common)
    timings["score_s"] = since(started)
    if "regen" in conditions:
        started = now()
        # Large generation batches: on a CPU a step of generate costs about the same for 1 or 16
        # sequences of a small model, so the default scoring budget (1k tokens) would be ~10x slower.
        regen = ftprep_step(ftprep.regen, source, work / "regen", verify="math", n=scale.regen_n, max_new_tokens=scale.regen_tokens,
                            batch_tokens=8192, dtype="bfloat16" if scale.bf16 else "float32", **common)
        timings["regen_s"] = since(started)
        started = now()
        regen_scored = ftprep_step(ftprep.score, regen, work / "regen-scored", **common)
        timings["regen_score_s"] = since(started)
    sets = {}
    started = now()
    for condition in [c for c in TRAINED if c in conditions]:
        folder = ftprep_step(ftprep.mask, regen_scored if condition == "regen" else scored, work / f"train-{condition}",
                             **MASK_OPTIONS[condition])
        stats = json.loads((folder / "stats.json").read_text())
        sets[condition] = {"folder": str(folder), "stats": stats}
    timings["mask_s"] = since(started)
    if "regen" in conditions:
        sets["regen"]["regen_stats"] = {"stats": json.loads((regen / "stats.json").read_text()),
                                        "generated_rows": _count_generated(regen)}
    return sets


def _count_generated(regen: Path) -> dict:
    import datasets

    sources = datasets.load_from_disk(str(regen))["source"]
    return {name: sources.count(name) for name in sorted(set(sources))}


# -- training ----------------------------------------------------------------------------------


def native_bf16(device: str) -> bool:
    """Whether this machine trains faster in bf16 than in float32 (ftprep's own rule for --dtype auto)."""
    from ftprep.runtime import resolve_dtype

    return resolve_dtype("auto", device, cpu_bf16=None) == "bfloat16"


def load_model(name: str, device: str):
    """The model in float32 as ftprep loads it (no loading bar per condition and seed), with a
    tokenizer of its own: the trainer may change the one it is given."""
    from transformers import AutoTokenizer

    from ftprep.models import load_model as load_ftprep_model
    from ftprep.models import resolve_model

    folder = resolve_model(name)
    return load_ftprep_model(folder, "float32", device), AutoTokenizer.from_pretrained(folder)


def train(scale: Scale, folder: str, seed: int, device: str, workdir: Path):
    """Full fine-tuning with TRL's SFTTrainer and ftprep's weighted loss (plain SFT loss without weights)."""
    import datasets
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ftprep.trainer import TokenWeightCollator, with_token_weights

    model, tokenizer = load_model(scale.model, device)
    dataset = datasets.load_from_disk(folder)
    args = SFTConfig(output_dir=str(workdir), max_steps=scale.steps, per_device_train_batch_size=scale.batch,
                     learning_rate=scale.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     seed=seed, data_seed=seed, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=device == "cpu", remove_unused_columns=False, max_length=None, disable_tqdm=True,
                     bf16=scale.bf16)
    trainer = with_token_weights(SFTTrainer)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                             data_collator=TokenWeightCollator(tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)  # a dict per step; the losses are kept in log_history
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model.eval(), tokenizer, losses


def tokens_trained(scale: Scale, stats: dict) -> dict:
    """Supervised tokens (and weight sum) the run trains on: the set's totals times the epochs its steps make."""
    epochs = scale.steps * scale.batch / max(stats.get("rows_out", stats.get("rows", 0)) or 1, 1)
    return {"epochs": epochs, "supervised_tokens": round(stats["supervised_tokens"] * epochs),
            "weight_sum": round(stats.get("weight_sum", stats["supervised_tokens"]) * epochs)}


# -- the run -----------------------------------------------------------------------------------


def evaluate(model, tokenizer, scale: Scale, test, items, references) -> dict:
    started = now()
    target = evaluate_target(model, tokenizer, test, scale.answer_tokens)
    target_s, started = since(started), now()
    retention = evaluate_retention(model, tokenizer, items)
    drift = evaluate_drift(model, references)
    return {"target": target["accuracy"], "retention": retention["accuracy"], "drift": drift["logprob"],
            "target_examples": target["examples"], "eval_s": {"target": target_s, "retention_drift": since(started)}}


def base_evaluation(scale: Scale, out: Path, test, items, prompts, device: str) -> dict:
    """The base model's scores and its greedy answers to the drift prompts, computed once per eval key."""
    path = out / f"base-{scale.eval_key()}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, tokenizer = load_model(scale.model, device)
    started = now()
    prompt_tokens = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    answers = greedy_answers(model, tokenizer, prompt_tokens, scale.drift_tokens)
    answer_s = since(started)
    references = list(zip(prompt_tokens, answers))
    result = evaluate(model, tokenizer, scale, test, items, references)
    result["eval_s"]["drift_answers"] = answer_s
    result["references"] = [[list(p), list(a)] for p, a in references]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def run_condition(scale: Scale, out: Path, condition: str, seed: int, training_set: dict, test, items, references,
                  device: str) -> dict:
    precision = "-bf16" if scale.bf16 else ""
    key = (f"{condition}-lr{scale.learning_rate:g}-steps{scale.steps}-b{scale.batch}{precision}-s{seed}-{scale.data_key()}"
           f"-{scale.eval_key()}")
    path = out / "runs" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = now()
    model, tokenizer, losses = train(scale, training_set["folder"], seed, device, out / "trainer")
    train_s = since(started)
    result = evaluate(model, tokenizer, scale, test, items, references)
    result.update({"condition": condition, "seed": seed, "losses": losses, "train_s": train_s,
                   "tokens": tokens_trained(scale, training_set["stats"])})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def summarize(values: list[float]) -> dict:
    """Mean and spread over seeds: the sample standard deviation (0 with one seed)."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "values": [float(v) for v in array]}


def table_rows(base: dict, runs: dict[str, list[dict]], sets: dict) -> list[dict]:
    rows = [{"condition": "base", "target": summarize([base["target"]]), "retention": summarize([base["retention"]]),
             "drift": summarize([base["drift"]]), "masked_share": None, "tokens_trained": 0, "weight_sum": 0}]
    for condition, results in runs.items():
        stats = sets[condition]["stats"]
        rows.append({"condition": condition,
                     **{metric: summarize([r[metric] for r in results]) for metric in ("target", "retention", "drift")},
                     "masked_share": stats.get("masked_share"), "mean_weight": stats.get("mean_weight"),
                     "tokens_trained": results[0]["tokens"]["supervised_tokens"],
                     "weight_sum": results[0]["tokens"]["weight_sum"],
                     "final_loss": float(np.mean([np.mean(r["losses"][-5:]) for r in results]))})
    return rows


def format_table(rows: list[dict], seeds: int) -> str:
    def cell(summary, digits, scale=1.0):
        mean = summary["mean"] * scale
        return f"{mean:.{digits}f}" if seeds < 2 else f"{mean:.{digits}f} ± {summary['sd'] * scale:.{digits}f}"

    lines = ["| condition | target (exact answer, %) | retention (MC, %) | drift (logprob/token) | masked share | "
             "tokens trained |", "|---|---|---|---|---|---|"]
    for row in rows:
        masked = "-" if row["masked_share"] is None else f"{100 * row['masked_share']:.1f} %"
        if row["condition"] == "soft":
            # masked = no loss (weight 0), as ftprep's stats count it
            masked = f"{100 * row['masked_share']:.1f} % (mean weight {row['mean_weight']:.2f})"
        tokens = f"{row['tokens_trained']:,}" + (f" (weight sum {row['weight_sum']:,})" if row["condition"] == "soft" else "")
        lines.append(f"| {row['condition']} | {cell(row['target'], 1, 100)} | {cell(row['retention'], 1, 100)} | "
                     f"{cell(row['drift'], 3)} | {masked} | {tokens} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Three panels (target, retention, drift), one bar per condition with its spread; drawn with pillow."""
    from PIL import Image, ImageDraw

    # Drift as the change from the base model: the absolute values (about -0.8) would hide differences of 0.01.
    panels = [("target (%)", "target", 100.0), ("retention (%)", "retention", 100.0),
              ("drift: change of logprob/token from base", "drift", 1.0)]
    base_drift = rows[0]["drift"]["mean"] if rows[0]["condition"] == "base" else 0.0
    width, height, margin = 960, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    colors = [(120, 120, 120), (214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14)]
    panel_width = (width - margin) // len(panels)
    for p, (title, metric, factor) in enumerate(panels):
        left, top, bottom = margin + p * panel_width, 40, height - 70
        values = [(row[metric]["mean"] - (base_drift if metric == "drift" else 0.0)) * factor for row in rows]
        spreads = [row[metric]["sd"] * factor for row in rows]
        low, high = min(0.0, min(v - s for v, s in zip(values, spreads))), max(0.0, max(v + s for v, s in zip(values, spreads)))
        span = (high - low) or 1.0

        def y(value, low=low, span=span, top=top, bottom=bottom):
            return bottom - (value - low) / span * (bottom - top)

        draw.text((left, 10), title, fill="black")
        draw.line([(left, y(0)), (left + panel_width - 30, y(0))], fill="black")
        bar = (panel_width - 40) // len(rows)
        for k, (row, value, spread) in enumerate(zip(rows, values, spreads)):
            x0 = left + 5 + k * bar
            draw.rectangle([x0, min(y(0), y(value)), x0 + bar - 8, max(y(0), y(value))], fill=colors[k % len(colors)])
            if spread:
                middle = x0 + (bar - 8) // 2
                draw.line([(middle, y(value - spread)), (middle, y(value + spread))], fill="black", width=2)
            draw.text((x0, bottom + 22), row["condition"], fill="black")
            draw.text((x0, min(y(value), y(0)) - 14 if value >= 0 else max(y(value), y(0)) + 2),
                      f"{value:.1f}" if factor > 1 else f"{value:+.3f}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def run(scale: Scale, out: Path, device: str = "cpu", conditions=CONDITIONS, log=print, write: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log(f"{scale.model} on {device}: training in {'bf16 mixed precision' if scale.bf16 else 'float32'}, "
        f"{scale.steps} steps of batch {scale.batch} at lr {scale.learning_rate:g}, {scale.seeds} seed(s)")
    timings: dict = {}
    train_rows, test = split_target(scale)
    items = retention_items(scale.retention_items, seed=scale.data_seed * 1000 + 3)
    prompts = drift_prompts(scale.drift_prompts)
    write_jsonl(out / "data" / "test.jsonl", test)
    write_jsonl(out / "data" / "retention.jsonl", items)
    started = now()
    sets = prepare_training_sets(scale, out, train_rows, device, timings, conditions)
    timings["ftprep_s"] = since(started)
    for condition in sets:
        stats = sets[condition]["stats"]
        log(f"{condition}: {stats.get('rows_out', stats.get('rows'))} rows, masked share "
            f"{stats.get('masked_share', 0):.3f}, mean weight {stats.get('mean_weight', 1):.3f}")
    started = now()
    base = base_evaluation(scale, out, test, items, prompts, device)
    timings["base_eval_s"] = since(started)
    log(f"base: target {base['target']:.3f} retention {base['retention']:.3f} drift {base['drift']:.3f}")
    references = [(p, a) for p, a in base["references"]]
    runs: dict[str, list[dict]] = {}
    for condition in [c for c in conditions if c != "base"]:
        for seed in range(scale.seeds):
            started = now()
            result = run_condition(scale, out, condition, seed, sets[condition], test, items, references, device)
            timings[f"{condition}-s{seed}_s"] = since(started)
            runs.setdefault(condition, []).append(result)
            log(f"{condition} seed {seed}: target {result['target']:.3f} retention {result['retention']:.3f} "
                f"drift {result['drift']:.3f} (train {result['train_s']['wall_s']:.0f} s wall, {result['train_s']['cpu_s']:.0f} s CPU, loss {result['losses'][0]:.3f} -> "
                f"{result['losses'][-1]:.3f})")
    rows = table_rows(base, runs, sets)
    results = {"scale": asdict(scale), "device": device, "rows": rows, "table": format_table(rows, scale.seeds),
               "regen": sets.get("regen", {}).get("regen_stats"), "timings_s": timings,
               "runs": {c: [{k: r[k] for k in ("seed", "target", "retention", "drift", "losses", "train_s", "eval_s",
                                                "target_examples")} for r in rs] for c, rs in runs.items()},
               "base_examples": base["target_examples"], "base_eval_s": base["eval_s"]}
    if write:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        plot(rows, out / "forgetting.png")
    return results


def sweep(scale: Scale, out: Path, rates: list[float], device: str = "cpu", log=print) -> list[dict]:
    """Plain SFT at each learning rate (seed 0): how much it learns and how much it forgets."""
    found = []
    for rate in rates:
        results = run(replace(scale, learning_rate=rate, seeds=1), out, device, conditions=("base", "sft"), log=log,
                      write=False)
        row = next(r for r in results["rows"] if r["condition"] == "sft")
        found.append({"learning_rate": rate, **{m: row[m]["mean"] for m in ("target", "retention", "drift")}})
        log(f"lr {rate:g}: target {found[-1]['target']:.3f} retention {found[-1]['retention']:.3f} "
            f"drift {found[-1]['drift']:.3f}")
    (out / "sweep.json").write_text(json.dumps(found, indent=1))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=FULL.model, help="ftprep model alias, folder or hub id (default smollm2-135m)")
    parser.add_argument("--quick", action="store_true", help="fewer rows and steps, one seed (about 7 min on 2 cores; the full run about 42)")
    parser.add_argument("--seeds", type=int, help="training seeds per condition (full run: 2, --quick: 1)")
    parser.add_argument("--out", type=Path, help="folder for data, caches and results (default out/forgetting[-quick])")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-4: see the README for the sweep)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--train-rows", type=int)
    parser.add_argument("--test-rows", type=int)
    parser.add_argument("--retention-items", type=int)
    parser.add_argument("--drift-prompts", type=int)
    parser.add_argument("--regen-n", type=int, help="ftprep regen candidates per row")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="comma-separated subset of base,sft,stm,regen,soft (the table has the ones run)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's); 1 on a machine shared with other jobs, where waiting "
                             "threads spin: measured there, 2 threads spent 3.2x the CPU time of 1 for the same wall time")
    parser.add_argument("--precision", choices=("auto", "float32"), default="auto",
                        help="auto: train in bf16 mixed precision and regenerate in bf16 where the CPU or GPU multiplies "
                             "bf16 natively (float32 elsewhere); float32: everything in float32")
    parser.add_argument("--sweep-lr", help="comma-separated learning rates: plain SFT only, one seed, to pick the rate")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else FULL
    overrides = {"model": args.model, "seeds": args.seeds, "steps": args.steps, "learning_rate": args.lr,
                 "batch": args.batch, "train_rows": args.train_rows, "test_rows": args.test_rows,
                 "retention_items": args.retention_items, "drift_prompts": args.drift_prompts, "regen_n": args.regen_n}
    scale = replace(scale, **{k: v for k, v in overrides.items() if v is not None},
                    bf16=args.precision == "auto" and native_bf16(args.device))
    out = args.out or ROOT / "out" / ("forgetting-quick" if args.quick else "forgetting")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {message}", flush=True)

    if args.sweep_lr:
        sweep(scale, out, [float(rate) for rate in args.sweep_lr.split(",")], args.device, log)
        return
    conditions = tuple(name for name in CONDITIONS if name in args.conditions.split(","))
    if unknown := set(args.conditions.split(",")) - set(CONDITIONS):
        parser.error(f"--conditions: unknown {sorted(unknown)}; known: {','.join(CONDITIONS)}")
    results = run(scale, out, args.device, conditions=("base", *conditions), log=log)
    print(results["table"])
    if results["regen"]:
        print(f"regen: kept rows by source {results['regen']['generated_rows']}")
    print(f"wrote {out / 'results.json'} and {out / 'forgetting.png'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
