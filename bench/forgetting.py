"""Does training on ftprep's output forget less? The STM paper's experiment, in its own regime, at small scale.

Two regimes (`--regime`):
- paper (the default), as the STM paper's reference code trains (appier-research/robust-llm-finetunes,
  train_with_mask.py): a target task the base model already half does (two-digit addition, about
  35-40 % before training), the answer format stated in every prompt, ground-truth answers in a style
  of their own; LoRA r16, alpha 32, dropout 0.05 on all linear layers (peft), lr 2e-5 cosine with
  warmup, 3 epochs of batch 4, evaluated after every epoch, the best-validation epoch reported.
- stress: the bench's earlier setting, which the paper never claimed: full fine-tuning at lr 1e-4
  constant for one epoch, on word problems whose closing format ("The answer is N") the prompt never
  states and the base model does not write (about 7 % before training).

Conditions, every one through the same `with_token_weights(SFTTrainer)`, collator, steps and seeds (without a
`loss_weights` column the loss is plain token-averaged SFT): base (no training), sft (`ftprep mask
--strategy none`), stm (`--strategy threshold`, tau 2.5), stm-22 (`--strategy quantile --quantile 0.22
--scope dataset`: the paper's masked share, 21-24 %), stm-keep-shared (stm with `--keep-shared`: the
tokens most rows share and the mask removes stay supervised), regen (`ftprep regen --verify math`, then score and
the threshold mask), soft (`--strategy soft`, trained with ftprep.trainer's weighted loss).

Measures, before training and after every epoch: target (exact final answer under greedy decoding on
held-out problems; the validation split picks the epoch), retention (multiple choice: capitals,
antonyms, categories, by the log-likelihood of each choice; chance 25 %), drift (the mean log-probability,
under the trained model, of the base model's own greedy answers to general prompts). Each ftprep
condition is compared with sft paired by seed, with 95 % bootstrap intervals over the items, and gets a
verdict computed from them (forgetting_stats.py).

Run:
    python bench/forgetting.py --quick                  # paper regime, one seed: at most 10 min on 2 cores
    python bench/forgetting.py                          # paper regime, 3 seeds
    python bench/forgetting.py --regime stress          # the stress regime, 3 seeds
    python bench/forgetting.py --quick --sweep-lr 2e-5,1e-4   # plain SFT only, to see what a rate does
    python bench/forgetting.py --model HF_ID_OR_FOLDER --device cuda    # a larger model on a GPU

Everything lands under --out (default out/forgetting-REGIME[-quick]): data/ (the generated rows),
ftprep/ (the score, regen and mask outputs), base-*.json (the base model's evaluations and greedy
answers), runs/ (one JSON per trained condition and seed: every epoch's measures, its loss curve),
results.json and forgetting.png. A rerun reuses all of it, so only what changed is recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own modules beside this file

import forgetting_data as data  # noqa: E402
import forgetting_stats as stats  # noqa: E402
from forgetting_eval import evaluate, greedy_answers, prompt_ids  # noqa: E402
from forgetting_plot import plot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("base", "sft", "stm", "stm-22", "stm-keep-shared", "regen", "soft")
TRAINED = CONDITIONS[1:]
# stm-keep-shared answers the stress regime, where stm removes the answer format all rows share; in
# the paper regime the prompt states the format (run it there with --conditions).
STRESS_ONLY = ("stm-keep-shared",)


def default_conditions(regime: str) -> tuple[str, ...]:
    return tuple(name for name in CONDITIONS if regime == "stress" or name not in STRESS_ONLY)
PAPER_SHARE = 0.22  # the STM paper masks 20.8 % (MBPP) and 23.8 % (MATH) of response tokens at tau 2.5
MASK_OPTIONS = {  # ftprep mask settings per condition (regen: on the regenerated, rescored rows)
    "sft": {"strategy": "none"},
    "stm": {"strategy": "threshold", "threshold": 2.5},
    "stm-22": {"strategy": "quantile", "quantile": PAPER_SHARE, "scope": "dataset"},
    # What the stress regime's stm removes is the closing format every row shares ("The answer is"):
    # keep_shared gives those tokens their labels back.
    "stm-keep-shared": {"strategy": "threshold", "threshold": 2.5, "keep_shared": True},
    "regen": {"strategy": "threshold", "threshold": 2.5},
    "soft": {"strategy": "soft"},
}


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a run; the caches are keyed by it."""

    regime: str = "paper"
    model: str = "smollm2-135m"
    train_rows: int = 200
    val_rows: int = 40
    test_rows: int = 100
    retention_items: int = 120
    drift_prompts: int = 120
    epochs: int = 3
    batch: int = 4
    learning_rate: float = 2e-5
    schedule: str = "cosine"
    warmup_steps: int = 20
    adapter: str = "lora"  # lora, dora (peft) or full (full fine-tuning)
    seeds: int = 3
    regen_n: int = 1  # one candidate per row: generation dominates the CPU time of ftprep's part
    regen_tokens: int = 64  # longest regen candidate
    answer_tokens: int = 48  # greedy budget for a target answer
    drift_tokens: int = 32  # length of the base model's greedy answers that drift scores
    data_seed: int = 0
    # Training in bf16 mixed precision and regen in bf16 where the hardware multiplies bf16 natively
    # (--precision auto). Set explicitly: TRL's SFTConfig turns bf16 on by itself, even on a CPU
    # without it. Scoring follows ftprep's --dtype auto; the evaluations stay float32.
    bf16: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_rows / self.batch)

    def split_sizes(self) -> tuple[int, int, int]:
        return self.train_rows, self.val_rows, self.test_rows

    def data_key(self) -> str:
        """Names the ftprep outputs: they depend on the model and the rows, not on training."""
        fields = (self.regime, self.model, self.split_sizes(), self.regen_n, self.regen_tokens, self.data_seed, self.bf16)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:8]

    def eval_key(self) -> str:
        fields = (self.regime, self.model, self.split_sizes(), self.retention_items, self.drift_prompts,
                  self.answer_tokens, self.drift_tokens, self.data_seed)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:8]

    def run_key(self, condition: str, seed: int) -> str:
        fields = (self.adapter, self.learning_rate, self.schedule, self.warmup_steps, self.epochs, self.batch, self.bf16)
        training = hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:8]
        return f"{condition}-{training}-s{seed}-{self.data_key()}-{self.eval_key()}"


# Full runs sized to finish in 120 minutes on 2 cores without native bf16 (about half that with it):
# 120 training rows instead of the paper's thousands, 60 drift prompts, 3 seeds.
PAPER = Scale(train_rows=120, val_rows=32, test_rows=96, drift_prompts=60)
# --quick: one seed and smaller splits, sized to finish in 10 minutes on 2 cores without native bf16
# (the evaluations after every epoch take about as long as the training).
PAPER_QUICK = replace(PAPER, train_rows=32, val_rows=16, test_rows=32, retention_items=48, drift_prompts=24, seeds=1,
                      warmup_steps=3)
# One epoch: nothing for a validation split to choose.
STRESS = Scale(regime="stress", train_rows=320, val_rows=0, test_rows=80, drift_prompts=60, epochs=1, batch=8, learning_rate=1e-4,
               schedule="constant", warmup_steps=0, adapter="full", regen_tokens=96, answer_tokens=96)
STRESS_QUICK = replace(STRESS, train_rows=48, test_rows=40, retention_items=60, drift_prompts=40, batch=4, seeds=1)
PRESETS = {("paper", False): PAPER, ("paper", True): PAPER_QUICK, ("stress", False): STRESS, ("stress", True): STRESS_QUICK}


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
    """score -> mask for sft, stm, stm-22, soft; regen -> score -> mask for regen. Returns per
    condition the training folder and its mask stats."""
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
        regen = ftprep_step(ftprep.regen, source, work / "regen", verify="math", n=scale.regen_n,
                            max_new_tokens=scale.regen_tokens, batch_tokens=8192,
                            dtype="bfloat16" if scale.bf16 else "float32", **common)
        timings["regen_s"] = since(started)
        started = now()
        regen_scored = ftprep_step(ftprep.score, regen, work / "regen-scored", **common)
        timings["regen_score_s"] = since(started)
    sets = {}
    started = now()
    for condition in [c for c in TRAINED if c in conditions]:
        folder = ftprep_step(ftprep.mask, regen_scored if condition == "regen" else scored, work / f"train-{condition}",
                             **MASK_OPTIONS[condition])
        sets[condition] = {"folder": str(folder), "stats": json.loads((folder / "stats.json").read_text())}
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


def with_adapter(model, adapter: str):
    """The model as the regime trains it: whole (full) or with a LoRA/DoRA adapter on every linear
    layer, r 16, alpha 32, dropout 0.05 (the STM paper's train_with_mask.py)."""
    if adapter == "full":
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", use_dora=adapter == "dora",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(scale: Scale, folder: str, seed: int, device: str, workdir: Path, on_epoch) -> list[float]:
    """Train one condition; `on_epoch(epoch, model)` measures the model after each epoch (every
    condition gets the same steps: epochs x ceil(train rows / batch), whatever its rows lost to the
    mask). Returns the loss of every step."""
    import datasets
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftprep.trainer import TokenWeightCollator, with_token_weights

    model, tokenizer = load_model(scale.model, device)
    model = with_adapter(model, scale.adapter)
    steps_per_epoch = scale.steps_per_epoch

    class EveryEpoch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % steps_per_epoch == 0:
                model.eval()
                on_epoch(state.global_step // steps_per_epoch, model, tokenizer)
                model.train()

    args = SFTConfig(output_dir=str(workdir), max_steps=steps_per_epoch * scale.epochs,
                     per_device_train_batch_size=scale.batch, learning_rate=scale.learning_rate,
                     lr_scheduler_type=scale.schedule, warmup_steps=scale.warmup_steps, weight_decay=0.0, seed=seed,
                     data_seed=seed, logging_steps=1, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                     remove_unused_columns=False, max_length=None, disable_tqdm=True, bf16=scale.bf16,
                     # TRL turns it on by default; these models fit without it, and it costs a third more compute.
                     gradient_checkpointing=False)
    trainer = with_token_weights(SFTTrainer)(model=model, args=args, train_dataset=datasets.load_from_disk(folder),
                                             processing_class=tokenizer, callbacks=[EveryEpoch()],
                                             data_collator=TokenWeightCollator(tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)  # a dict per step; the losses are kept in log_history
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def tokens_trained(scale: Scale, mask_stats: dict) -> dict:
    """Supervised tokens (and weight sum) the run trains on: the set's totals times the epochs its steps make."""
    epochs = scale.steps_per_epoch * scale.epochs * scale.batch / max(mask_stats.get("rows_out", 0), 1)
    return {"epochs": epochs, "supervised_tokens": round(mask_stats["supervised_tokens"] * epochs),
            "weight_sum": round(mask_stats.get("weight_sum", mask_stats["supervised_tokens"]) * epochs)}


# -- the run -----------------------------------------------------------------------------------


@dataclass
class EvalSet:
    val: list[dict]
    test: list[dict]
    items: list[dict]
    references: list  # (prompt ids, the base model's greedy answer ids) per drift prompt
    answer_tokens: int

    def measure(self, model, tokenizer) -> dict:
        started = now()
        result = evaluate(model, tokenizer, self.val, self.test, self.items, self.references, self.answer_tokens)
        result["eval_s"] = since(started)
        return result


def base_evaluation(scale: Scale, out: Path, val, test, items, prompts, device: str) -> dict:
    """The base model's scores and its greedy answers to the drift prompts, computed once per eval key."""
    path = out / f"base-{scale.eval_key()}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, tokenizer = load_model(scale.model, device)
    started = now()
    prompt_tokens = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    answers = greedy_answers(model, tokenizer, prompt_tokens, scale.drift_tokens)
    references = [[list(p), list(a)] for p, a in zip(prompt_tokens, answers)]
    result = EvalSet(val, test, items, references, scale.answer_tokens).measure(model, tokenizer)
    result.update(references=references, drift_answers_s=since(started))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def run_condition(scale: Scale, out: Path, condition: str, seed: int, training_set: dict, evals: EvalSet,
                  device: str, log=print) -> dict:
    path = out / "runs" / f"{scale.run_key(condition, seed)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    epochs: list[dict] = []

    def on_epoch(epoch: int, model, tokenizer) -> None:
        epochs.append({"epoch": epoch, **evals.measure(model, tokenizer)})
        last = epochs[-1]
        log(f"  {condition} seed {seed} epoch {epoch}: validation {share(last['val_target'])}, test {last['target']:.3f}, "
            f"retention {last['retention']:.3f}, drift {last['drift']:.3f}")

    started = now()
    losses = train(scale, training_set["folder"], seed, device, out / "trainer", on_epoch)
    result = {"condition": condition, "seed": seed, "epochs": epochs, "best_epoch": best_epoch(epochs), "losses": losses,
              "run_s": since(started), "tokens": tokens_trained(scale, training_set["stats"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def best_epoch(epochs: list[dict]) -> int:
    """The index of the epoch with the best validation accuracy; on a tie the later one (it trained
    more, and the validation split did not say it got worse). Without a validation split: the last."""
    scores = [epoch["val_target"] if epoch["val_target"] is not None else 0.0 for epoch in epochs]
    return max(range(len(epochs)), key=lambda k: (scores[k], k))


def condition_row(condition: str, results: list[dict], mask_stats: dict) -> dict:
    """One condition's figures over its seeds: at each run's best-validation epoch, at the last epoch,
    and per epoch."""
    best = [run["epochs"][run["best_epoch"]] for run in results]
    last = [run["epochs"][-1] for run in results]
    metrics = ("target", "retention", "drift", "val_target")
    return {"condition": condition,
            **{metric: stats.summarize([epoch[metric] for epoch in best]) for metric in metrics[:3]},
            "last": {metric: stats.summarize([epoch[metric] for epoch in last]) for metric in metrics[:3]},
            "per_epoch": [{metric: stats.summarize([run["epochs"][k][metric] for run in results]) for metric in metrics}
                          for k in range(len(results[0]["epochs"]))],
            "best_epochs": [run["best_epoch"] + 1 for run in results],
            "masked_share": mask_stats.get("masked_share"), "mean_weight": mask_stats.get("mean_weight"),
            "tokens_trained": results[0]["tokens"]["supervised_tokens"], "weight_sum": results[0]["tokens"]["weight_sum"],
            "final_loss": float(np.mean([np.mean(run["losses"][-5:]) for run in results]))}


def base_row(base: dict) -> dict:
    return {"condition": "base", **{metric: stats.summarize([base[metric]]) for metric in ("target", "retention", "drift")},
            "masked_share": None, "tokens_trained": 0, "weight_sum": 0}


def comparisons(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Each ftprep condition against sft, paired by seed, at each run's best-validation epoch (and the
    last epoch, for the record): the differences with their intervals, and the verdict."""
    if "sft" not in runs:
        return {}
    found = {}
    for condition, results in runs.items():
        if condition == "sft":
            continue
        entry = {}
        for which in ("best", "last"):
            def items(rs, metric, which=which):
                return [run["epochs"][run["best_epoch"] if which == "best" else -1][metric] for run in rs]

            entry[which] = {metric: stats.paired_difference(items(results, f"{metric}_items"), items(runs["sft"], f"{metric}_items"))
                            for metric in ("target", "retention")}
        entry["verdict"] = stats.verdict(entry["best"]["target"], entry["best"]["retention"])
        found[condition] = entry
    return found


def format_table(rows: list[dict], seeds: int) -> str:
    def cell(summary, digits, scale=1.0):
        mean = summary["mean"] * scale
        return f"{mean:.{digits}f}" if seeds < 2 else f"{mean:.{digits}f} ± {summary['sd'] * scale:.{digits}f}"

    lines = ["| condition | target % (best epoch) | target % (last epoch) | retention % | drift (logprob/token) | "
             "masked share | tokens trained |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        masked = "-" if row["masked_share"] is None else f"{100 * row['masked_share']:.1f} %"
        if row["condition"] == "soft":
            # masked = no loss (weight 0), as ftprep's stats count it
            masked += f" (mean weight {row['mean_weight']:.2f})"
        tokens = f"{row['tokens_trained']:,}" + (f" (weight sum {row['weight_sum']:,})" if row["condition"] == "soft" else "")
        last = cell(row["last"]["target"], 1, 100) if "last" in row else "-"
        lines.append(f"| {row['condition']} | {cell(row['target'], 1, 100)} | {last} | {cell(row['retention'], 1, 100)} | "
                     f"{cell(row['drift'], 3)} | {masked} | {tokens} |")
    return "\n".join(lines)


def format_comparisons(found: dict[str, dict]) -> str:
    lines = ["| condition | target vs sft (points, 95 % interval) | retention vs sft (points, 95 % interval) | verdict |",
             "|---|---|---|---|"]
    for condition, entry in found.items():
        lines.append(f"| {condition} | {stats.interval_text(entry['best']['target'])} | "
                     f"{stats.interval_text(entry['best']['retention'])} | {entry['verdict']} |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path, scale: Scale) -> None:
    paths = {"base": [(100 * rows[0]["target"]["mean"], 100 * rows[0]["retention"]["mean"])]}
    best = {}
    for row in rows[1:]:
        paths[row["condition"]] = [(100 * epoch["target"]["mean"], 100 * epoch["retention"]["mean"]) for epoch in row["per_epoch"]]
        best[row["condition"]] = int(round(float(np.median(row["best_epochs"])))) - 1
    title = (f"{scale.model}, {scale.regime} regime: {scale.adapter} at lr {scale.learning_rate:g}, {scale.epochs} epoch(s), "
             f"{scale.seeds} seed(s) (mean)")
    plot(paths, best, path, title)


def run(scale: Scale, out: Path, device: str = "cpu", conditions=None, log=print, write: bool = True) -> dict:
    conditions = ("base", *default_conditions(scale.regime)) if conditions is None else conditions
    out.mkdir(parents=True, exist_ok=True)
    log(f"{scale.model} on {device}, {scale.regime} regime: {scale.adapter} training in "
        f"{'bf16 mixed precision' if scale.bf16 else 'float32'}, {scale.epochs} epoch(s) of {scale.steps_per_epoch} steps "
        f"of batch {scale.batch} at lr {scale.learning_rate:g} ({scale.schedule}), {scale.seeds} seed(s)")
    timings: dict = {}
    train_rows, val, test = data.target_splits(scale.regime, scale.split_sizes(), scale.data_seed)
    items = data.retention_items(scale.retention_items, seed=scale.data_seed * 1000 + 3)
    prompts = data.drift_prompts(scale.drift_prompts)
    for name, rows in (("val", val), ("test", test), ("retention", items)):
        write_jsonl(out / "data" / f"{name}.jsonl", rows)
    started = now()
    sets = prepare_training_sets(scale, out, train_rows, device, timings, conditions)
    timings["ftprep_s"] = since(started)
    for condition, found in sets.items():
        log(f"{condition}: {found['stats'].get('rows_out')} rows, masked share {found['stats'].get('masked_share', 0):.3f}, "
            f"mean weight {found['stats'].get('mean_weight', 1):.3f}")
    started = now()
    base = base_evaluation(scale, out, val, test, items, prompts, device)
    timings["base_eval_s"] = since(started)
    log(f"base: validation {share(base['val_target'])}, test {base['target']:.3f}, retention {base['retention']:.3f}, "
        f"drift {base['drift']:.3f}")
    evals = EvalSet(val, test, items, base["references"], scale.answer_tokens)
    runs: dict[str, list[dict]] = {}
    for condition in [c for c in conditions if c != "base"]:
        for seed in range(scale.seeds):
            started = now()
            result = run_condition(scale, out, condition, seed, sets[condition], evals, device, log)
            timings[f"{condition}-s{seed}_s"] = since(started)
            runs.setdefault(condition, []).append(result)
            best = result["epochs"][result["best_epoch"]]
            log(f"{condition} seed {seed}: best epoch {result['best_epoch'] + 1}: target {best['target']:.3f}, retention "
                f"{best['retention']:.3f}, drift {best['drift']:.3f} ({result['run_s']['wall_s']:.0f} s wall, loss "
                f"{result['losses'][0]:.3f} -> {result['losses'][-1]:.3f})")
    rows = [base_row(base)] + [condition_row(c, rs, sets[c]["stats"]) for c, rs in runs.items()]
    found = comparisons(runs)
    results = {"scale": asdict(scale), "device": device, "base": {k: base[k] for k in ("val_target", "target", "retention", "drift")},
               "rows": rows, "comparisons": found, "verdicts": {c: entry["verdict"] for c, entry in found.items()},
               "table": format_table(rows, scale.seeds), "comparison_table": format_comparisons(found),
               "masked_shares": {c: sets[c]["stats"].get("masked_share") for c in sets},
               "regen": sets.get("regen", {}).get("regen_stats"), "timings_s": timings,
               "runs": {c: [{k: r[k] for k in ("seed", "best_epoch", "losses", "run_s")} |
                            {"epochs": [{k: v for k, v in e.items() if not k.endswith("_items")} for e in r["epochs"]]}
                            for r in rs] for c, rs in runs.items()},
               "base_examples": base["examples"]}
    if write:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        figure(rows, out / "forgetting.png", scale)
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
    parser.add_argument("--regime", choices=data.REGIMES, default="paper",
                        help="paper: LoRA at lr 2e-5 on a task the model half does (the STM paper's setting); "
                             "stress: full fine-tuning at lr 1e-4 on a new answer format")
    parser.add_argument("--quick", action="store_true", help="fewer rows and items, one seed (paper: at most 10 min on 2 cores)")
    parser.add_argument("--model", help="ftprep model alias, folder or hub id (default smollm2-135m)")
    parser.add_argument("--seeds", type=int, help="training seeds per condition (full runs: 3, --quick: 1)")
    parser.add_argument("--out", type=Path, help="folder for data, caches and results (default out/forgetting-REGIME[-quick])")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float, help="learning rate (paper: 2e-5, stress: 1e-4)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--adapter", choices=("lora", "dora", "full"), help="paper: lora; stress: full")
    for name in ("train-rows", "val-rows", "test-rows", "retention-items", "drift-prompts"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--regen-n", type=int, help="ftprep regen candidates per row")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--conditions", help=f"comma-separated subset of {','.join(CONDITIONS)} (the table has the "
                        f"ones run; default: all, {','.join(STRESS_ONLY)} in the stress regime only)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's); 1 on a machine shared with other jobs, where waiting "
                             "threads spin")
    parser.add_argument("--precision", choices=("auto", "float32"), default="auto",
                        help="auto: train in bf16 mixed precision and regenerate in bf16 where the CPU or GPU multiplies "
                             "bf16 natively (float32 elsewhere); float32: everything in float32")
    parser.add_argument("--sweep-lr", help="comma-separated learning rates: plain SFT only, one seed")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = {"model": args.model, "seeds": args.seeds, "epochs": args.epochs, "learning_rate": args.lr,
                 "batch": args.batch, "adapter": args.adapter, "train_rows": args.train_rows, "val_rows": args.val_rows,
                 "test_rows": args.test_rows, "retention_items": args.retention_items,
                 "drift_prompts": args.drift_prompts, "regen_n": args.regen_n}
    scale = replace(PRESETS[args.regime, args.quick], **{k: v for k, v in overrides.items() if v is not None})
    scale = replace(scale, bf16=args.precision == "auto" and native_bf16(args.device))
    out = args.out or ROOT / "out" / f"forgetting-{args.regime}{'-quick' if args.quick else ''}"
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {message}", flush=True)

    if args.sweep_lr:
        sweep(scale, out, [float(rate) for rate in args.sweep_lr.split(",")], args.device, log)
        return
    asked = args.conditions.split(",") if args.conditions else default_conditions(args.regime)
    if unknown := set(asked) - set(CONDITIONS):
        parser.error(f"--conditions: unknown {sorted(unknown)}; known: {','.join(CONDITIONS)}")
    conditions = tuple(name for name in CONDITIONS if name in asked)
    results = run(scale, out, args.device, conditions=("base", *conditions), log=log)
    print(results["table"])
    print()
    print(results["comparison_table"])
    if results["regen"]:
        print(f"regen: kept rows by source {results['regen']['generated_rows']}")
    print(f"wrote {out / 'results.json'} and {out / 'forgetting.png'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
