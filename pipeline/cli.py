"""The `ftprep` command line: commands that read like a sentence.

    ftprep score data.jsonl -o scored
    ftprep mask scored -o train --strategy threshold --threshold 2.5
    ftprep inspect train --row 3
    ftprep push train user/my-sft-data --private
    ftprep iv data.jsonl -o iv.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ftprep.config import MaskConfig, ScoreConfig
from ftprep.engines import ENGINES, EngineOptions
from ftprep.stages.errors import FtprepError
from ftprep.models import DEFAULT_MODEL
from ftprep.stages.anchor import ANCHOR_RULES
from ftprep.stages.mask import STRATEGIES, TARGETS, WEIGHT_FNS
from ftprep.stages.normalize import FORMATS
from ftprep.stages.regen.checks import VERIFIERS
from ftprep.stages.regen.prompts import MODES


def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


def stacked(*decorators):
    """Several click options as one decorator, in the order given."""
    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


# What every command that reads an input dataset takes, and every command that runs a model.
input_options = stacked(
    click.option("--format", "fmt", type=click.Choice(FORMATS), help="Input format (default: detected)."),
    click.option("--split", help="Split of a dataset folder or hub dataset (default: train)."),
    click.option("--limit", type=int, callback=positive, help="Only the first N rows."),
)
# Where the shards run: here, or on a Ray cluster.
engine_options = stacked(
    click.option("--engine", type=click.Choice(ENGINES), default="local", help="local: this process; ray: a Ray cluster (pip install 'ftprep[ray]'), with the same output."),
    click.option("--ray-address", help="ray: the cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a Ray instance for this run)."),
    click.option("--num-workers", type=int, callback=positive, help="ray: model copies, each in its own actor (default: one per GPU in the cluster; 1 on CPU)."),
    click.option("--gpus-per-worker", type=click.FloatRange(0), help="ray: GPUs each worker holds (default: 1 on GPU, 0 on CPU)."),
)


def engine_settings(engine, ray_address, num_workers, gpus_per_worker) -> EngineOptions:
    return EngineOptions(engine=engine, ray_address=ray_address, num_workers=num_workers, gpus_per_worker=gpus_per_worker)


device_options = stacked(
    click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", help="auto: float32 on CPU, bfloat16 on GPU."),
    click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N."),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="ftprep")
def cli():
    """Rewrite SFT datasets so fine-tuning forgets less."""


@cli.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Folder for the scored dataset.")
@click.option("--model", default=DEFAULT_MODEL, help="Alias, model folder, .gguf file or hub id.")
@input_options
@click.option("--train-on", type=click.Choice(["all", "last"]), default="all", help="Which assistant turns are trainable.")
@click.option("--max-length", type=int, callback=positive, help="Longest row in tokens.")
@click.option("--overlong", type=click.Choice(["drop", "truncate"]), default="drop", help="What to do with longer rows.")
@click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", help="Scoring engine; auto: vllm on a CUDA GPU when installed, else hf.")
@click.option("--batch-tokens", type=int, callback=positive, help="Token budget of one forward pass, padding included (default: 1024 on CPU, 16384 on GPU).")
@device_options
@click.option("--top-k", type=click.IntRange(0, 1000), default=0, help="Also store the model's top-k ids and logprobs per token.")
@click.option("--score-prompt", is_flag=True, help="Score every token, not only assistant tokens.")
@click.option("--shard-rows", type=int, default=1000, callback=positive, help="Input rows per output shard (the unit of resume).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 0.99), help="vllm: share of GPU memory (of RAM on CPU) vLLM takes (default: 0.85 on GPU, 0.3 on CPU).")
@click.option("--max-num-batched-tokens", type=int, callback=positive, help="vllm: tokens per engine step; the logits peak grows with it (default: 8192 on GPU, 2048 on CPU).")
@engine_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output instead of resuming it.")
def score(input, output, model, fmt, split, limit, train_on, max_length, overlong, backend, batch_tokens, dtype,
          device, top_k, score_prompt, shard_rows, gpu_memory_utilization, max_num_batched_tokens,
          engine, ray_address, num_workers, gpus_per_worker, overwrite):
    """Score every ground-truth token of INPUT under the model: logprob, rank, entropy."""
    from ftprep.runner import run_score

    config = ScoreConfig(input=input, output=output, model=model, format=fmt, split=split, limit=limit,
                         train_on=train_on, max_length=max_length, overlong=overlong, backend=backend,
                         batch_tokens=batch_tokens, dtype=dtype, device=device, top_k=top_k,
                         score_prompt=score_prompt, shard_rows=shard_rows,
                         gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens)
    manifest = run_score(config, overwrite=overwrite, echo=click.echo,
                         engine=engine_settings(engine, ray_address, num_workers, gpus_per_worker))
    click.echo(_summary(output, manifest))


@cli.command()
@click.argument("input", required=False)
@click.option("-o", "--output", help="Folder for the regenerated dataset (messages format).")
@click.option("--model", default=DEFAULT_MODEL, help="Alias, model folder, .gguf file or hub id (the model you will fine-tune).")
@input_options
@click.option("--train-on", type=click.Choice(["all", "last"]), default="all", help="Which assistant turns to rewrite.")
@click.option("--mode", type=click.Choice(MODES), default="rephrase", help="rephrase: the model sees the reference answer as a guide (SDFT); self: the original prompt alone.")
@click.option("--template", type=click.Path(), help="rephrase: text file with {instruction} and {reference} (see --print-template).")
@click.option("--print-template", is_flag=True, help="Print the built-in rephrase template and exit.")
@click.option("--n", "n", type=click.IntRange(1, 64), default=4, help="Candidates sampled per turn.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.7, help="Sampling temperature.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, help="Nucleus sampling mass.")
@click.option("--max-new-tokens", type=int, default=512, callback=positive, help="Longest candidate; longer ones are rejected.")
@click.option("--seed", type=int, default=0, help="Sampling seed: the same seed gives the same output.")
@click.option("--length-ratio", type=click.FloatRange(1), default=3.0, help="Reject candidates more than this many times longer or shorter than the reference.")
@click.option("--beat-ground-truth/--no-beat-ground-truth", default=True, help="Accept only rewrites the model finds likelier (lower perplexity) than the ground truth.")
@click.option("--verify", type=click.Choice(VERIFIERS), default="none", help="math: same final number as the reference; exact: same normalized text; regex: same --pattern capture.")
@click.option("--pattern", help="--verify regex: the answer's pattern; group 1 (or the whole match) is compared.")
@click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", help="Generation and scoring engine; auto: vllm on a CUDA GPU when installed, else hf.")
@click.option("--batch-tokens", type=int, callback=positive, help="hf scoring: token budget of one forward pass.")
@device_options
@click.option("--shard-rows", type=int, default=1000, callback=positive, help="Input rows per output shard (the unit of resume).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 0.99), help="vllm: share of GPU memory (of RAM on CPU) vLLM takes.")
@click.option("--max-num-batched-tokens", type=int, callback=positive, help="vllm: tokens per engine step.")
@engine_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output instead of resuming it.")
def regen(input, output, model, fmt, split, limit, train_on, mode, template, print_template, n, temperature, top_p,
          max_new_tokens, seed, length_ratio, beat_ground_truth, verify, pattern, backend, batch_tokens, dtype, device,
          shard_rows, gpu_memory_utilization, max_num_batched_tokens, engine, ray_address, num_workers, gpus_per_worker,
          overwrite):
    """Rewrite the assistant turns of INPUT with the model itself; keep the best checked rewrite, else the ground truth."""
    if print_template:
        from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE

        click.echo(DEFAULT_TEMPLATE)
        return
    # INPUT and -o are optional to click only so that --print-template works alone.
    if not input:
        raise click.UsageError("Missing argument 'INPUT'.")
    if not output:
        raise click.UsageError("Missing option '-o' / '--output'.")
    from ftprep.config import RegenConfig
    from ftprep.runner import run_regen

    config = RegenConfig(input=input, output=output, model=model, format=fmt, split=split, limit=limit, train_on=train_on,
                         mode=mode, template=template, n=n, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, length_ratio=length_ratio,
                         beat_ground_truth=beat_ground_truth, verify=verify,
                         pattern=pattern, backend=backend, batch_tokens=batch_tokens, dtype=dtype, device=device,
                         shard_rows=shard_rows, gpu_memory_utilization=gpu_memory_utilization,
                         max_num_batched_tokens=max_num_batched_tokens)
    manifest = run_regen(config, overwrite=overwrite, echo=click.echo,
                         engine=engine_settings(engine, ray_address, num_workers, gpus_per_worker))
    click.echo(_summary(output, manifest))


@cli.command()
@click.argument("scored")
@click.option("-o", "--output", required=True, help="Folder for the training dataset.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="threshold", help="How scores become labels or weights.")
@click.option("--threshold", type=float, default=2.5, help="threshold: mask assistant tokens with perplexity above this.")
@click.option("--quantile", type=click.FloatRange(0, 1), default=0.2, help="quantile: share of assistant tokens to mask.")
@click.option("--scope", type=click.Choice(["sample", "dataset"]), default="sample", help="quantile: per row or over the dataset.")
@click.option("--weight-fn", type=click.Choice(WEIGHT_FNS), default="gauss", help="soft: exp(-((ppl-1)/sigma)^2) or p^alpha.")
@click.option("--sigma", type=float, default=0.75, callback=positive, help="soft gauss width.")
@click.option("--alpha", type=float, default=1.0, callback=positive, help="soft prob exponent.")
@click.option("--min-weight", type=click.FloatRange(0, 1), default=0.0, help="soft: weights below this are raised to it.")
@click.option("--keep-eos/--no-keep-eos", default=True, help="Keep end-of-turn tokens supervised (so the model learns to stop).")
@click.option("--min-kept", type=click.IntRange(0), default=1, help="Reject rows left with fewer supervised tokens.")
@click.option("--weights/--no-weights", default=None, help="Write loss_weights (default: only for soft).")
@click.option("--target", type=click.Choice(TARGETS), default="hf", help="Trainer the columns are for: hf keeps loss_weights; trl, axolotl and llama-factory get input_ids, attention_mask, labels only (axolotl with --strategy anchor: also its KD plugin's target_* columns).")
@click.option("--against", help="delta: the same input scored with a second model (ftprep score --model B).")
@click.option("--delta", type=float, default=2.5, help="delta: mask assistant tokens whose perplexity under the --against model exceeds the one in SCORED by more than this.")
@click.option("--anchors", type=click.Choice(ANCHOR_RULES), default="first", help="anchor: label the first token of each assistant turn the model ranks below its greedy choice, or all of them.")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="anchor: c_t, the anchors' target is c_t x their label + (1 - c_t) x the reference distribution.")
@engine_options
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def mask(scored, output, strategy, threshold, quantile, scope, weight_fn, sigma, alpha, min_weight, keep_eos,
         min_kept, weights, target, against, delta, anchors, confidence, engine, ray_address, num_workers, gpus_per_worker,
         overwrite):
    """Turn SCORED into a training dataset: input_ids, attention_mask, labels (and loss_weights)."""
    from ftprep.runner import run_mask

    config = MaskConfig(scored=scored, output=output, strategy=strategy, threshold=threshold, quantile=quantile,
                        scope=scope, weight_fn=weight_fn, sigma=sigma, alpha=alpha, min_weight=min_weight,
                        keep_eos=keep_eos, min_kept=min_kept, weights=weights, target=target, against=against,
                        delta=delta, anchors=anchors, confidence=confidence)
    manifest = run_mask(config, overwrite=overwrite, echo=click.echo,
                        engine=engine_settings(engine, ray_address, num_workers, gpus_per_worker))
    click.echo(_summary(output, manifest))


@cli.command()
@click.argument("folder")
def stats(folder):
    """Print the stats of a scored or training dataset."""
    path = Path(folder) / "stats.json"
    if not path.is_file():
        raise FtprepError(f"{folder} has no stats.json: give a folder written by ftprep score or ftprep mask")
    from ftprep.inspection import format_stats

    click.echo(format_stats(json.loads(path.read_text())))


@cli.command()
@click.argument("folder")
@click.option("--row", type=click.IntRange(0), default=0, help="Row number (0-based).")
@click.option("--threshold", type=float, default=2.5, help="Scored datasets: mark tokens with perplexity above this.")
@click.option("--color/--no-color", default=None, help="Colour (default: on a terminal).")
def inspect(folder, row, threshold, color):
    """Show one row's tokens, with masked or low-weight tokens marked, and its numbers."""
    from ftprep.inspection import inspect_row

    use_color = sys.stdout.isatty() if color is None else color
    click.echo(inspect_row(Path(folder), row, threshold, use_color), color=use_color)


@cli.command()
@click.argument("folder")
@click.option("-o", "--output", default="report.html", help="HTML file to write.")
@click.option("--threshold", type=float, default=2.5, help="Scored datasets: the perplexity threshold to show.")
def report(folder, output, threshold):
    """Write one self-contained HTML page with plots and examples for FOLDER."""
    from ftprep.report import render_report
    from ftprep.writers import write_text_atomic

    write_text_atomic(Path(output), render_report(Path(folder), threshold))
    click.echo(f"wrote {output}")


@cli.command("export-config")
@click.argument("folder")
@click.option("--target", type=click.Choice(TARGETS), default="trl", help="Trainer to print a snippet for (hf and trl print the same TRL Python).")
def export_config(folder, target):
    """Print a ready-to-use training snippet for FOLDER (TRL Python, Axolotl or LLaMA-Factory YAML)."""
    from ftprep.export import export_config as snippet

    click.echo(snippet(Path(folder), target), nl=False)


@cli.command("hft-plan")
@click.option("-o", "--output", required=True, help="JSON file for the plan.")
@click.option("--model", default=DEFAULT_MODEL, help="Alias, model folder or hub id; only its config is read.")
@click.option("--ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, help="Share of each layer's attention and feed-forward projections that trains.")
@click.option("--seed", type=int, default=0, help="Seed of the random choice of projections.")
@click.option("--train-embeddings", is_flag=True, help="Also train the token embeddings (and an untied lm_head).")
@click.option("--train-norms", is_flag=True, help="Also train the norm weights.")
@click.option("--axolotl-yaml", type=click.Path(dir_okay=False), help="Also write the plan as Axolotl `unfrozen_parameters` to this file.")
def hft_plan(output, model, ratio, seed, train_embeddings, train_norms, axolotl_yaml):
    """Half fine-tuning (HFT): choose per layer which half of the projections trains; the rest stays frozen."""
    from ftprep.hft_plan import make_hft_plan, plan_summary, write_hft_plan

    plan = make_hft_plan(model, ratio, seed, train_embeddings, train_norms)
    write_hft_plan(plan, Path(output), Path(axolotl_yaml) if axolotl_yaml else None)
    click.echo(plan_summary(output, plan))
    if axolotl_yaml:
        click.echo(f"wrote {axolotl_yaml}")


@cli.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="The .safetensors file for the vectors; OUT.json beside it gets the heads and scores.")
@click.option("--model", default=DEFAULT_MODEL, help="Alias, model folder, .gguf file or hub id (the model you will fine-tune).")
@input_options
@click.option("--prompts", type=click.IntRange(2), default=16, help="Rows (drawn with --seed) whose prompts are averaged over and patched into.")
@click.option("--heads", type=click.IntRange(1), default=10, help="Heads kept: those whose patching restores the answer most.")
@click.option("--answer-tokens", type=click.IntRange(1), default=4, help="First answer tokens whose log-probability measures a head's effect.")
@click.option("--layers", help="Layers to measure, e.g. 0-9,12 (default: all); fewer layers, less time.")
@click.option("--seed", type=int, default=0, help="Seed of the rows drawn and of the shuffled instructions.")
@device_options
def iv(input, output, model, fmt, split, limit, prompts, heads, answer_tokens, layers, seed, dtype, device):
    """Extract INPUT's instruction vector: the heads that carry its task, summed per layer (arXiv 2406.12227)."""
    from ftprep.config import IVConfig
    from ftprep.iv import extract_instruction_vector, iv_summary

    config = IVConfig(input=input, output=output, model=model, format=fmt, split=split, limit=limit, prompts=prompts,
                      heads=heads, answer_tokens=answer_tokens, layers=layers, seed=seed, dtype=dtype, device=device)
    click.echo(iv_summary(output, extract_instruction_vector(config)))


@cli.command()
@click.argument("folder")
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", help="Branch to push to, created when missing (default: main).")
@click.option("--create-pr", is_flag=True, help="Open a pull request with the changes instead of committing to the branch.")
@click.option("--config-name", default="default", help="Config (subset) the files become; several configs can share a repo.")
@click.option("--license", help="License in the card's metadata (default: the repo card's, else other).")
@click.option("--files-per-commit", type=int, default=50, callback=positive, help="Parquet files per commit; a rerun after an interruption skips committed files.")
def push(folder, repo_id, private, revision, create_pr, config_name, license, files_per_commit):
    """Upload FOLDER to the Hub as dataset REPO_ID: Parquet files and a dataset card."""
    from ftprep.push import push_folder

    click.echo(push_folder(Path(folder), repo_id, private=private, revision=revision, create_pr=create_pr,
                           config_name=config_name, license=license, files_per_commit=files_per_commit, echo=click.echo))


def _summary(output: str, manifest: dict) -> str:
    counts = manifest["counts"]
    return f"{output}: {counts['rows_out']} rows written, {counts['rows_rejected']} rejected (see rejects.jsonl)"


def main():
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help())
    except click.UsageError as error:
        command = f" {error.ctx.command_path.split(' ', 1)[1]}" if error.ctx and " " in error.ctx.command_path else ""
        click.echo(f"error: {error.format_message()} (see ftprep{command} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except FtprepError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
