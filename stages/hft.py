"""Half fine-tuning plans (HFT, Hui et al. 2024, arXiv 2404.18466): which parameters train.

HFT freezes half of the parameters of every transformer layer, chosen at random per layer and
per category: half of the attention projections (q/k/v/o) and half of the feed-forward
projections (gate/up/down). Embeddings and norms stay frozen unless asked for.

Input: parameter names and shapes (a model skeleton, no weights). Output: a plan dict.

Selection rule. A projection (its weight and, when it has one, its bias) trains or freezes as
a whole. Within a category, projections are drawn among those of the same weight size (a
"size class"): with grouped-query attention q/o are larger than k/v, and drawing 2 of 4 at
random would train anywhere from 25 % to 75 % of the attention parameters. For a class of m
projections per layer over L layers, T = round(ratio * m * L) (halves round up) projections
train in all: every layer trains floor(T / L) of them and T mod L layers, drawn with the seed,
train one more. So each layer trains about `ratio` of its projections (ratio 0.5: 2 of 4
attention projections, 1 or 2 of the 3 feed-forward ones), and in every size class the
trained share of parameters is T / (m * L), at most 1 / (2 m L) away from the ratio; a
category's share is a weighted mean of its classes' shares, so it is within the same bound,
plus the sizes of biases, which differ between projections of one class (Qwen2: q has one,
o has not).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict

from ftprep.stages.errors import FtprepError, Setting, SettingError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")
CATEGORIES = ("attention", "ffn", "embeddings", "norms")
PROJECTION = re.compile(
    r"^(?:.+\.)?layers\.(?P<layer>\d+)\."
    r"(?:self_attn\.(?P<attention>[qkvo]_proj)|mlp\.(?P<ffn>gate_proj|up_proj|down_proj))\.(?P<kind>weight|bias)$"
)
EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|lm_head)\.weight$")
NORM = re.compile(r"(?:^|\.)\w*norm\w*\.(?:weight|bias)$")
SUPPORTED = "Llama, Qwen2 and Mistral-style models are supported"


def classify(name: str) -> tuple[str, int | None, str | None]:
    """(category, layer, projection) of a parameter name; layer and projection only for projections."""
    match = PROJECTION.match(name)
    if match:
        category = "attention" if match["attention"] else "ffn"
        return category, int(match["layer"]), match["attention"] or match["ffn"]
    if EMBEDDING.search(name):
        return "embeddings", None, None
    if NORM.search(name):
        return "norms", None, None
    raise FtprepError(f"cannot make an HFT plan for this model: {name} is none of the parameters a plan knows "
                      f"(layers.N.self_attn.q/k/v/o_proj, layers.N.mlp.gate/up/down_proj, embed_tokens, lm_head, norms); "
                      f"{SUPPORTED}")


def layer_projections(shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[int, dict[str, list[str]]]]:
    """category -> layer -> projection -> its parameter names, checked to be the same in every layer."""
    layers: dict[str, dict[int, dict[str, list[str]]]] = {"attention": defaultdict(dict), "ffn": defaultdict(dict)}
    for name in shapes:
        category, layer, projection = classify(name)
        if projection is not None:
            layers[category][layer].setdefault(projection, []).append(name)
    layer_ids = sorted(set(layers["attention"]) | set(layers["ffn"]))
    if not layer_ids:
        raise FtprepError(f"cannot make an HFT plan for this model: it has no transformer layers with attention "
                          f"or feed-forward projections; {SUPPORTED}")
    if layer_ids != list(range(len(layer_ids))):
        raise FtprepError(f"cannot make an HFT plan for this model: its layers are numbered {layer_ids[:5]}..., not 0..{len(layer_ids) - 1}")
    for category, expected in (("attention", ATTENTION), ("ffn", FFN)):
        for layer in layer_ids:
            found = tuple(sorted(layers[category][layer]))
            weights = [sum(name.endswith(".weight") for name in names) for names in layers[category][layer].values()]
            if any(count != 1 for count in weights):
                raise FtprepError(f"cannot make an HFT plan for this model: layer {layer} holds more than one {category} "
                                  f"projection of a kind (several layer stacks?); {SUPPORTED}")
            if found != tuple(sorted(expected)):
                raise FtprepError(f"cannot make an HFT plan for this model: layer {layer} has the {category} projections "
                                  f"{list(found)}, not {list(expected)}; {SUPPORTED}")
            # The size classes come from layer 0, so every layer must look like it.
            if _shapes_of(layers[category][layer], shapes) != _shapes_of(layers[category][0], shapes):
                raise FtprepError(f"cannot make an HFT plan for this model: the {category} projections of layer {layer} "
                                  "differ in shape from those of layer 0")
    return {category: dict(by_layer) for category, by_layer in layers.items()}


def _shapes_of(projections: dict[str, list[str]], shapes: dict) -> dict:
    return {projection: sorted(tuple(shapes[name]) for name in names) for projection, names in projections.items()}


def size_classes(projections: dict[str, list[str]], shapes: dict) -> list[list[str]]:
    """Projections of one layer grouped by weight size, largest first (a fixed order for the draws)."""
    by_size = defaultdict(list)
    for projection, names in sorted(projections.items()):
        weight = next(name for name in names if name.endswith(".weight"))
        by_size[math.prod(shapes[weight])].append(projection)
    return [by_size[size] for size in sorted(by_size, reverse=True)]


def round_half_up(value: float) -> int:
    # Python's round() goes to the even number on halves; a plan should not depend on that.
    return math.floor(value + 0.5)


def draw_projections(classes: list[list[str]], layers: int, ratio: float, rng: random.Random) -> list[set[str]]:
    """For each layer, the projections of one category that train (see the module docstring)."""
    chosen = [set() for _ in range(layers)]
    for members in classes:
        total = round_half_up(ratio * len(members) * layers)
        base, extra = divmod(total, layers)
        layers_with_extra = set(rng.sample(range(layers), extra))
        for layer in range(layers):
            chosen[layer].update(rng.sample(members, base + (layer in layers_with_extra)))
    return chosen


def axolotl_patterns(names: list[str]) -> list[str]:
    """Axolotl `unfrozen_parameters` entries matching exactly these names.

    Axolotl turns every "." into a literal dot itself, so the dots stay unescaped here
    (an escaped one would become "\\\\." there, a backslash); ^...$ anchors the whole name.
    """
    return [f"^{name}$" for name in names]


def hft_plan(shapes: dict[str, tuple[int, ...]], ratio: float = 0.5, seed: int = 0,
             train_embeddings: bool = False, train_norms: bool = False) -> dict:
    """The plan for a model whose parameters (in model order) have these shapes."""
    if not 0 < ratio < 1:
        raise SettingError("{ratio} must be between 0 and 1 (exclusive), not {value}", field="ratio", ratio=Setting("ratio"),
                           value=ratio)
    projections = layer_projections(shapes)
    layers = len(projections["attention"])
    rng = random.Random(seed)
    per_layer = [{} for _ in range(layers)]
    trainable = set()
    for category in ("attention", "ffn"):
        classes = size_classes(projections[category][0], shapes)
        for layer, chosen in enumerate(draw_projections(classes, layers, ratio, rng)):
            per_layer[layer][category] = sorted(chosen)
            trainable.update(name for projection in chosen for name in projections[category][layer][projection])
    always = {"embeddings": train_embeddings, "norms": train_norms}
    trainable.update(name for name in shapes if always.get(classify(name)[0]))

    trainable_names = [name for name in shapes if name in trainable]
    return {
        "method": "HFT (arXiv 2404.18466)",
        "ratio": ratio,
        "seed": seed,
        "train_embeddings": train_embeddings,
        "train_norms": train_norms,
        "layers": layers,
        "per_layer": per_layer,
        "parameters": parameter_counts(shapes, trainable),
        "tensors": {"total": len(shapes), "trainable": len(trainable_names)},
        "trainable": trainable_names,
        "frozen": [name for name in shapes if name not in trainable],
        "axolotl": {"unfrozen_parameters": axolotl_patterns(trainable_names)},
    }


def parameter_counts(shapes: dict, trainable: set[str]) -> dict:
    """Totals, trainable counts and shares overall, per category and over attention + ffn."""
    totals = dict.fromkeys(CATEGORIES, 0)
    trained = dict.fromkeys(CATEGORIES, 0)
    for name, shape in shapes.items():
        category = classify(name)[0]
        totals[category] += math.prod(shape)
        trained[category] += math.prod(shape) if name in trainable else 0

    def summary(total: int, count: int) -> dict:
        return {"total": total, "trainable": count, "share": count / total if total else 0.0}

    return {
        **summary(sum(totals.values()), sum(trained.values())),
        "by_category": {category: summary(totals[category], trained[category]) for category in CATEGORIES},
        "attention_and_ffn": summary(totals["attention"] + totals["ffn"], trained["attention"] + trained["ffn"]),
    }
