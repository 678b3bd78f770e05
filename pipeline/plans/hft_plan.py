"""`ftprep hft-plan`: a half fine-tuning plan for a model, as JSON and as Axolotl config."""

from __future__ import annotations

import json
from pathlib import Path

from ftprep.manifest import ModelInfo, RunManifest
from ftprep.models import fingerprint_model, parameter_shapes, resolve_model
from ftprep.stages.hft import hft_plan
from ftprep.writers import write_json_atomic, write_text_atomic


class HFTPlanRun:
    """`ftprep hft-plan` as the runner runs it (ftprep.runner.run_files): the plan, and the Axolotl
    YAML when asked, with a manifest beside the plan."""

    made_from = "model"

    def __init__(self, settings):
        self.settings = settings
        self.output = settings.output
        self.model_dir = resolve_model(settings.model)  # a model that is not there fails before anything is written
        self.fingerprint = fingerprint_model(self.model_dir)

    def identity(self) -> dict:
        return {"command": "hft-plan", "settings": self.settings.result_settings(), "model": self.fingerprint}

    def files(self) -> list[Path]:
        yaml = [Path(self.settings.axolotl_yaml)] if self.settings.axolotl_yaml else []
        return [Path(self.output), *yaml]

    def write(self) -> RunManifest:
        from ftprep.runtime import library_versions

        settings = self.settings
        plan = make_hft_plan(settings.model, settings.ratio, settings.seed, settings.train_embeddings, settings.train_norms)
        write_hft_plan(plan, Path(settings.output), Path(settings.axolotl_yaml) if settings.axolotl_yaml else None)
        return RunManifest(stage="hft-plan", config=settings.to_dict(),
                           model=ModelInfo(spec=settings.model, path=self.model_dir, fingerprint=self.fingerprint),
                           versions=library_versions())


def read_hft_plan(path: Path) -> dict:
    """A plan file, checked against its manifest where it has one (plans from before manifests have none)."""
    from ftprep.manifest import open_run

    open_run(Path(path), missing_ok=True)
    return json.loads(Path(path).read_text())


def make_hft_plan(model: str, ratio: float, seed: int, train_embeddings: bool, train_norms: bool) -> dict:
    model_dir = resolve_model(model)
    shapes, model_type = parameter_shapes(model_dir)
    plan = hft_plan(shapes, ratio, seed, train_embeddings, train_norms)
    return {"model": {"spec": model, "path": model_dir, "model_type": model_type,
                      "fingerprint": fingerprint_model(model_dir)}, **plan}


def axolotl_yaml(plan: dict) -> str:
    """The `unfrozen_parameters` block of an Axolotl config; every other parameter is frozen."""
    header = (f"# HFT plan for {plan['model']['spec']}: ratio {plan['ratio']}, seed {plan['seed']}; "
              f"{plan['parameters']['trainable']:,} of {plan['parameters']['total']:,} parameters train.\n")
    # Single quotes: a pattern is then a plain string to YAML whatever characters it holds.
    entries = "".join(f"  - '{pattern}'\n" for pattern in plan["axolotl"]["unfrozen_parameters"])
    return f"{header}unfrozen_parameters:\n{entries}"


def write_hft_plan(plan: dict, output: Path, axolotl_output: Path | None = None) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, plan)
    if axolotl_output is not None:
        axolotl_output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(axolotl_output, axolotl_yaml(plan))


def plan_summary(output: str, plan: dict) -> str:
    params = plan["parameters"]
    selected = params["attention_and_ffn"]
    return (f"{output}: {plan['tensors']['trainable']} of {plan['tensors']['total']} tensors train, "
            f"{params['trainable'] / 1e6:.1f}M of {params['total'] / 1e6:.1f}M parameters ({params['share']:.1%}); "
            f"attention + feed-forward: {selected['share']:.1%} (ratio {plan['ratio']}, seed {plan['seed']})")
