"""The mask stage's own settings, typed, and the rules on which of them go together.

`MaskStageSettings` is what MaskStage and every strategy read: the strategy, its options (the
strategy's Options dataclass) and the settings all strategies share. `ftprep mask` declares its
options from these fields and from each strategy's Options; `from_config` reads them back from a
mask run's config (ftprep.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.options import setting
from ftprep.stages.strategies import REGISTRY, TARGETS, Strategy, option_names, strategy_named

DEFAULT_STRATEGY = "threshold"
# The strategies that keep a hard 0/1 loss and plain columns: what a trainer without
# ftprep.trainer can take.
HARD_STRATEGIES_TEXT = "a hard strategy (threshold, quantile, none)"


@dataclass(frozen=True, kw_only=True)
class MaskStageSettings:
    strategy: str = DEFAULT_STRATEGY
    options: object = None  # the strategy's Options; None: its defaults
    keep_eos: bool = setting(True, toggle=True, help="Keep end-of-turn tokens supervised (so the model learns to stop).")
    min_kept: int = setting(1, low=0, help="Reject rows left with fewer supervised tokens.")
    weights: bool | None = setting(None, toggle=True, help="Write loss_weights (default: only for soft).")
    target: str = setting("hf", choices=TARGETS,
                          help="Trainer the columns are for: hf keeps loss_weights; trl, axolotl and llama-factory get "
                               "input_ids, attention_mask, labels only (axolotl with --strategy anchor: also its KD "
                               "plugin's target_* columns).")
    keep_shared: bool = setting(False, help="Keep supervised the tokens the mask would remove from what most rows share (a fixed "
                                            "closing phrase or format marker); one pass over the dataset first; hard strategies only.")

    def __post_init__(self):
        if self.options is None:
            object.__setattr__(self, "options", self.rule.Options())

    @property
    def rule(self) -> Strategy:
        """The strategy itself."""
        return strategy_named(self.strategy)

    @classmethod
    def from_config(cls, config: Mapping) -> "MaskStageSettings":
        """The settings of a mask run's config (its strategy's options and the shared ones; the
        others' options it holds are left out). Names a config lacks take their defaults."""
        strategy = strategy_named(config.get("strategy", DEFAULT_STRATEGY))
        options = strategy.Options(**_known(strategy.Options, config))
        return cls(strategy=strategy.name, options=options, **_known(cls, config, skip=("strategy", "options")))


def shared_fields() -> tuple[dataclasses.Field, ...]:
    """The fields every strategy shares, as the mask command declares them."""
    return tuple(item for item in dataclasses.fields(MaskStageSettings) if item.name not in ("strategy", "options"))


def _known(settings_class, config: Mapping, skip=()) -> dict:
    names = {item.name for item in dataclasses.fields(settings_class)} - set(skip)
    return {key: value for key, value in config.items() if key in names}


def describe(settings: MaskStageSettings) -> str:
    """One sentence on what a mask run with these settings did."""
    text = settings.rule.describe(settings)
    if settings.keep_eos:
        text += "; end-of-turn tokens stay supervised"
    return text


def is_hard(strategy: Strategy, settings: MaskStageSettings) -> bool:
    """Whether the strategy writes labels alone: no weights, no columns of its own (anchor's KL targets)."""
    return not strategy.makes_weights and not strategy.columns(settings)


def hard_strategies() -> list[str]:
    return [strategy.name for strategy in REGISTRY.values() if is_hard(strategy, MaskStageSettings(strategy=strategy.name))]


def writes_weights(settings: MaskStageSettings) -> bool:
    """Whether the training columns include loss_weights."""
    if settings.target != "hf":
        return False
    return settings.weights if settings.weights is not None else settings.rule.makes_weights


def check_mask_settings(settings: MaskStageSettings, scored_top_k: int, scored: str, against: str | None) -> None:
    """Every rule on which settings go together, checked before anything is read or written.
    `scored_top_k`: the top-k the scored dataset `scored` holds; `against`: the second scoring given."""
    strategy = settings.rule
    if settings.target != "hf" and (strategy.makes_weights or settings.weights):
        raise SettingError("{target} cannot read loss_weights: use {hf} and train with ftprep.trainer, or {hard}",
                           field="target", target=Setting("target", settings.target), hf=Setting("target", "hf"),
                           hard=HARD_STRATEGIES_TEXT)
    if strategy.needs_top_k and not scored_top_k:
        raise SettingError("{strategy} needs the reference model's top-k, which {scored} lacks: rescore with {rescore}",
                           field="top_k", strategy=Setting("strategy", strategy.name), scored=scored,
                           rescore=Setting("top_k", 20, command="score"))
    strategy.check(settings)
    if settings.keep_shared and not is_hard(strategy, settings):
        hard = {f"hard{index}": Setting("strategy", name) for index, name in enumerate(hard_strategies())}
        raise SettingError("{keep_shared} keeps labels, and " + strategy.name + " writes more than labels: use it with "
                           + " or ".join(f"{{{key}}}" for key in hard), field="keep_shared", keep_shared=Setting("keep_shared"), **hard)
    if strategy.needs_against and not against:
        raise SettingError("{strategy} needs {against}: the same input scored with the second model", field="against",
                           strategy=Setting("strategy", strategy.name), against=Setting("against", metavar="SCORED_B"))
    if against and not strategy.needs_against:
        reader = next(other.name for other in REGISTRY.values() if other.needs_against)
        raise SettingError("{against} is read only by {reader}, not {name}: drop it or use {reader}", field="against",
                           against=Setting("against"), reader=Setting("strategy", reader), name=strategy.name)


def check_options_given(strategy_name: str, given: Iterable[str]) -> None:
    """Options the user gave (on the command line, in ftprep.mask(...)) that the chosen strategy does
    not read are a mistake to say, with the options it does read. Only given names count: every
    strategy's options have defaults, which are no mistake."""
    strategy = strategy_named(strategy_name)
    given = set(given)
    foreign = [(name, other) for other in REGISTRY.values() if other is not strategy
               for name in option_names(other) if name in given]
    if not foreign:
        return
    own = {f"own{index}": Setting(option) for index, option in enumerate(option_names(strategy))}
    reads = ", ".join(f"{{{key}}}" for key in own) if own else "no option of its own"
    if len(foreign) == 1:
        name, owner = foreign[0]
        raise SettingError("{given} is read only by {owner}, not " + strategy.name + ", which reads " + reads +
                           " and the options every strategy shares: drop it or use {owner}", field=name,
                           given=Setting(name), owner=Setting("strategy", owner.name), **own)
    names = {f"given{index}": Setting(name) for index, (name, _) in enumerate(foreign)}
    owners = ", ".join(dict.fromkeys(owner.name for _, owner in foreign))
    raise SettingError(", ".join(f"{{{key}}}" for key in names) + " are options of other strategies (" + owners +
                       "), not of " + strategy.name + ", which reads " + reads +
                       " and the options every strategy shares: drop them or choose the strategy they belong to",
                       field=foreign[0][0], **names, **own)


def check_export_target(settings: MaskStageSettings, folder: str, target: str) -> None:
    """Whether `target` can train on a folder that a mask run with these settings wrote."""
    settings.rule.check_export(settings, folder, target)
