"""Instruction vectors (IV; Jiang et al., 2024, arXiv 2406.12227), found as Function Vectors are
(Todd et al., 2024, arXiv 2310.15213): the task a dataset asks for, as a few attention heads' output.

A head's output is its slice of the input of its layer's `o_proj` (before the projection mixes the
heads). Its mean output is taken at the last prompt token, averaged over the clean prompts. Its causal
effect is measured by activation patching: on prompts whose instruction was corrupted, the head's output
at the last prompt token is replaced by its clean mean, and the effect is the mean gain in the
log-probability of the first answer tokens (patched minus corrupted, in nats). The heads with the
largest effect are kept; for each layer holding one, the IV is the sum over its kept heads of the mean
output projected through that head's columns of `o_proj`: a vector in the residual stream (hidden size)
that `add_instruction_vector` adds where those heads write, the output of that layer's `o_proj`.

Input: token ids (prompts, corrupted prompts, answers) and a loaded model; output: tensors. No files.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ftprep.stages.errors import FtprepError, Setting, SettingError

O_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj$")


@dataclass(frozen=True)
class AttentionLayout:
    """Where each layer's heads meet: the `o_proj` modules, by layer index."""

    o_proj: dict[int, torch.nn.Module]
    heads: int
    head_dim: int

    @property
    def layers(self) -> int:
        return len(self.o_proj)


def o_proj_modules(model) -> dict[int, torch.nn.Module]:
    """Each layer's o_proj by layer index; found by name, so wrapped models (PEFT, DDP) work too."""
    o_proj = {int(match[1]): module for name, module in model.named_modules() if (match := O_PROJ.search(name))}
    if not o_proj:
        raise FtprepError("instruction vectors need a model whose attention layers end in an o_proj "
                          "(Llama, Qwen2, Mistral, Gemma...): this model has none")
    return dict(sorted(o_proj.items()))


def attention_layout(model) -> AttentionLayout:
    o_proj = o_proj_modules(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    return AttentionLayout(o_proj, heads, o_proj[min(o_proj)].in_features // heads)


# -- hooks --------------------------------------------------------------------------------


@contextmanager
def _hooks(handles):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _at_positions(shape: torch.Size, positions: torch.Tensor | None, device) -> torch.Tensor:
    """A [batch, seq, 1] mask that is 1 at one position per row (every position when None)."""
    if positions is None:
        return torch.ones((*shape[:2], 1), device=device)
    mask = torch.zeros((*shape[:2], 1), device=device)
    mask[torch.arange(shape[0], device=device), positions.to(device)] = 1.0
    return mask


@contextmanager
def patch_heads(layout: AttentionLayout, layer: int, heads: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):
    """In each row i, replace the output of head heads[i] of `layer` by values[i] at position positions[i]."""

    def replace(module, args):
        outputs = args[0].clone()
        rows = torch.arange(outputs.shape[0], device=outputs.device)
        per_head = outputs.view(*outputs.shape[:2], layout.heads, layout.head_dim)
        per_head[rows, positions.to(outputs.device), heads.to(outputs.device)] = values.to(outputs)
        return (outputs, *args[1:])

    with _hooks([layout.o_proj[layer].register_forward_pre_hook(replace)]):
        yield


@contextmanager
def add_instruction_vector(model, vectors: dict[int, torch.Tensor], scale: float = 1.0,
                           positions: torch.Tensor | None = None):
    """Add scale * vectors[layer] to the output of that layer's o_proj, where the IV's heads write.

    At positions[i] of each row i (the last prompt token, as the IV was measured there), or at every
    position when positions is None. With scale 0 or no vectors no hook is set: outputs stay bitwise
    the same. A new tensor is returned, not an in-place edit, so gradients flow through the model.
    """
    if scale == 0 or not vectors:
        yield
        return
    o_proj = o_proj_modules(model)
    missing = sorted(set(vectors) - set(o_proj))
    if missing:
        raise SettingError("the instruction vector has layer {layer}, which this model lacks ({layers} layers): extract it "
                           "with {extract} for this model", field="model", layer=missing[0], layers=len(o_proj),
                           extract=Setting("model", command="iv"))

    def add(vector):
        def hook(module, args, output):
            shift = (scale * vector).to(device=output.device, dtype=output.dtype)
            return output + _at_positions(output.shape, positions, output.device).to(output.dtype) * shift

        return hook

    with _hooks([o_proj[layer].register_forward_hook(add(vector)) for layer, vector in vectors.items()]):
        yield


# -- measurements -------------------------------------------------------------------------


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask


def _device(model) -> torch.device:
    return next(model.parameters()).device


class AnswerScorer:
    """log p(first answer tokens | prompt), summed per row, for a fixed batch of prompts.

    The prompt without its last token runs once and stays as a KV cache: a patch at the last prompt
    token cannot change anything before it (causal attention), so each call recomputes only the last
    prompt token and the answer tokens. Prompts are right-padded; the gap between a short prompt and
    the answer positions is masked and position ids are given, so each row computes what it would alone.
    With copies > 1 every prompt appears that many times in a row (rows p * copies + c), its cache
    repeated rather than recomputed, so that one pass can patch a different head in each copy.
    """

    def __init__(self, model, prompts: list[list[int]], answers: list[list[int]], answer_tokens: int, pad_id: int,
                 copies: int = 1):
        self.model = model
        self.copies = copies
        device = _device(model)
        kept = [min(answer_tokens, len(answer)) for answer in answers]
        prefix_ids, prefix_mask = _right_pad([prompt[:-1] for prompt in prompts], pad_id)
        suffix_ids, suffix_mask = _right_pad([[prompt[-1], *answer[: n - 1]] for prompt, answer, n in zip(prompts, answers, kept)], pad_id)
        targets, target_mask = _right_pad([answer[:n] for answer, n in zip(answers, kept)], 0)
        positions = prefix_mask.sum(1, keepdim=True) + torch.arange(suffix_ids.shape[1])
        with torch.no_grad():
            self.cache = model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                               use_cache=True).past_key_values
        if copies > 1:
            self.cache.batch_repeat_interleave(copies)

        def rows(tensor):
            return tensor.repeat_interleave(copies, dim=0).to(device)

        self.suffix_ids, self.targets, self.target_mask, self.positions = map(rows, (suffix_ids, targets, target_mask, positions))
        self.mask = rows(torch.cat([prefix_mask, suffix_mask], 1))
        # Where the last prompt token sits in the recomputed part: its first position, in every row.
        self.last_prompt_token = torch.zeros(len(self.suffix_ids), dtype=torch.long, device=device)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        logits = self.model(input_ids=self.suffix_ids, attention_mask=self.mask, position_ids=self.positions,
                            past_key_values=self.cache, use_cache=True).logits
        self.cache.crop(-self.suffix_ids.shape[1])  # back to the prompts alone for the next call
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, self.targets[..., None])[..., 0]
        return (logprobs * self.target_mask).sum(1).cpu()

    def per_prompt(self) -> torch.Tensor:
        """One score per prompt (its first copy): what an unpatched, or uniformly patched, call gives."""
        return self().view(-1, self.copies)[:, 0]


# Rows of one patched pass (prompts x heads patched side by side): bounds the repeated cache.
MAX_PATCH_ROWS = 256


def heads_side_by_side(heads: int, prompts: int) -> int:
    """How many heads one pass patches: the largest divisor of `heads` that keeps rows within the bound."""
    return max(count for count in range(1, heads + 1) if heads % count == 0 and (count * prompts <= MAX_PATCH_ROWS or count == 1))


def mean_head_outputs(layout: AttentionLayout, scorer: AnswerScorer, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the (clean) scorer once and return each head's output at the last prompt token averaged over
    the prompts, [layers of the model, heads, head_dim] (zeros for layers not asked for), and the
    per-prompt answer log-probabilities of that same run."""
    captured: dict[int, torch.Tensor] = {}

    def capture(layer):
        def hook(module, args):
            rows = torch.arange(args[0].shape[0], device=args[0].device)
            captured[layer] = args[0][rows, scorer.last_prompt_token].float().cpu()

        return hook

    with _hooks([layout.o_proj[layer].register_forward_pre_hook(capture(layer)) for layer in layers]):
        logprobs = scorer.per_prompt()
    means = torch.zeros(layout.layers, layout.heads, layout.head_dim)
    for layer, outputs in captured.items():
        means[layer] = outputs.mean(0).view(layout.heads, layout.head_dim)
    return means, logprobs


def head_effects(layout: AttentionLayout, scorer: AnswerScorer, means: torch.Tensor, layers: list[int],
                 on_layer=lambda layer: None) -> torch.Tensor:
    """[layers of the model, heads]: mean over the scorer's (corrupted) prompts of log p(answer) with the
    head's output at the last prompt token set to its clean mean, minus log p(answer) unpatched; NaN for
    layers not measured. Copy c of each prompt patches head first + c, so a pass measures `copies` heads."""
    if layout.heads % scorer.copies:
        raise ValueError(f"{scorer.copies} copies do not divide {layout.heads} heads")
    unpatched = scorer.per_prompt()[:, None]
    copy = torch.arange(len(scorer.suffix_ids)) % scorer.copies
    effects = torch.full((layout.layers, layout.heads), float("nan"))
    for layer in layers:
        for first in range(0, layout.heads, scorer.copies):
            with patch_heads(layout, layer, first + copy, means[layer, first + copy], scorer.last_prompt_token):
                gain = scorer().view(-1, scorer.copies) - unpatched
            effects[layer, first : first + scorer.copies] = gain.mean(0)
        on_layer(layer)
    return effects


def top_heads(effects: torch.Tensor, count: int) -> list[tuple[int, int, float]]:
    """Up to `count` heads with the largest positive effect, as (layer, head, effect), largest first.

    A head whose clean mean does not raise the answer's probability is not carrying the task, so
    fewer heads come back when fewer help. Ties go to the lower layer and head (a stable sort)."""
    flat = torch.nan_to_num(effects.flatten(), nan=float("-inf"))
    order = torch.argsort(flat, descending=True, stable=True)[: min(count, int((flat > 0).sum()))]
    heads = effects.shape[1]
    return [(int(index) // heads, int(index) % heads, float(flat[index])) for index in order]


def layer_vectors(layout: AttentionLayout, means: torch.Tensor, chosen: list[tuple[int, int, float]]) -> dict[int, torch.Tensor]:
    """Per layer: sum over its chosen heads of the mean head output times that head's o_proj columns
    (the o_proj bias, shared by all heads, is left out)."""
    vectors: dict[int, torch.Tensor] = {}
    for layer, head, _ in sorted(chosen):
        columns = slice(head * layout.head_dim, (head + 1) * layout.head_dim)
        weight = layout.o_proj[layer].weight.detach().float().cpu()[:, columns]  # [hidden, head_dim]
        vectors[layer] = vectors.get(layer, 0) + weight @ means[layer, head]
    return vectors
