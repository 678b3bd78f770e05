"""ftprep: rewrite SFT datasets so fine-tuning forgets less (signatures for editors; written by
scripts/write-api-stub.py from the commands' settings: do not edit by hand)."""

from os import PathLike
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset

from ftprep.results import RowsRejectedWarning as RowsRejectedWarning
from ftprep.results import RunDataset as RunDataset
from ftprep.stages.errors import FtprepError as FtprepError
from ftprep.stages.errors import RowError as RowError

__all__ = ['FtprepError', 'RowError', 'RowsRejectedWarning', 'RunDataset', '__version__', 'score', 'regen', 'mask', 'inspect', 'stats', 'report', 'export_config', 'export', 'push', 'hft_plan', 'iv']
__version__: str

def score(
    input: str | PathLike[str] | Dataset | list[dict[str, Any]],
    *,
    output: str | PathLike[str] | None = None,
    model: str = 'smollm2-135m',
    chat_template: str | PathLike[str] | None = None,
    format: Literal['messages', 'sharegpt', 'alpaca', 'prompt-completion'] | None = None,
    split: str | None = None,
    limit: int | None = None,
    train_on: Literal['all', 'last'] = 'all',
    max_length: int | None = None,
    overlong: Literal['drop', 'truncate'] = 'drop',
    backend: Literal['auto', 'hf', 'vllm'] = 'auto',
    batch_tokens: int | None = None,
    dtype: Literal['auto', 'float32', 'bfloat16', 'float16'] = 'auto',
    device: str = 'auto',
    top_k: int = 0,
    score_prompt: bool = False,
    trust_remote_code: bool = False,
    allow_special_tokens: bool = False,
    shard_rows: int = 1000,
    gpu_memory_utilization: float | None = None,
    max_num_batched_tokens: int | None = None,
    tensor_parallel_size: int = 1,
    engine: Literal['local', 'ray'] = 'local',
    ray_address: str | None = None,
    num_workers: int | None = None,
    gpus_per_worker: float | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> RunDataset:
    """Score every ground-truth token of INPUT under the model: logprob, rank, entropy.

    `ftprep score` as a function: the same settings, checks and files; it returns the dataset it wrote: a datasets.Dataset (ftprep.RunDataset) that also carries .output, .stats, .rejects,
    .rejected and .reject_reasons; rows rejected are also named in a RowsRejectedWarning.

    Parameters
    ----------
    input
        JSONL, JSON, Parquet or CSV file, a save_to_disk folder, or a hub dataset id. Also a list of rows (dicts) or a datasets.Dataset.
    output (default None)
        Folder for the scored dataset. Default: a new temporary folder (kept after the call; the dataset returned reads from it).
    model (default 'smollm2-135m')
        Alias, model folder, .gguf file or hub id.
    chat_template (default None)
        Jinja chat template file: for a model without one (a base model), or to override the model's own.
    format (default None)
        Input format (default: detected). One of: messages, sharegpt, alpaca, prompt-completion.
    split (default None)
        Split of a dataset folder or hub dataset (default: train).
    limit (default None)
        Only the first N rows.
    train_on (default 'all')
        Which assistant turns are trainable. One of: all, last.
    max_length (default None)
        Longest row in tokens.
    overlong (default 'drop')
        What to do with longer rows. One of: drop, truncate.
    backend (default 'auto')
        Scoring engine; auto: vllm on a CUDA GPU when installed, else hf. One of: auto, hf, vllm.
    batch_tokens (default None)
        Token budget of one forward pass, padding included (default: 1024 on CPU, 16384 on GPU).
    dtype (default 'auto')
        auto: bfloat16 on a CPU with native bfloat16 matmuls (AVX512-BF16, AMX) and on a GPU that has it, float16 on an older GPU, float32 on other CPUs. One of: auto, float32, bfloat16, float16.
    device (default 'auto')
        auto, cpu, cuda or cuda:N.
    top_k (default 0)
        Also store the model's top-k ids and logprobs per token.
    score_prompt (default False)
        Score every token, not only assistant tokens.
    trust_remote_code (default False)
        Let a model that ships its own Python code run it (only for models you trust).
    allow_special_tokens (default False)
        Let message text that spells the chat template's control tokens (e.g. <|im_start|>) act as them; by default such rows are rejected.
    shard_rows (default 1000)
        Input rows per output shard (the unit of resume).
    gpu_memory_utilization (default None)
        vllm: share of GPU memory (of RAM on CPU) vLLM takes (default: 0.85 on GPU, 0.3 on CPU).
    max_num_batched_tokens (default None)
        vllm: tokens per engine step; the logits peak grows with it (default on GPU: sized from the vocabulary and the free memory, 512 to 16384; 2048 on CPU).
    tensor_parallel_size (default 1)
        vllm: GPUs one model is split over, for a model one GPU cannot hold (on Ray, give each worker as many: gpus_per_worker= N).
    engine (default 'local')
        local: this process; ray: a Ray cluster (pip install 'ftprep[ray]'), with the same output. One of: local, ray.
    ray_address (default None)
        ray: the cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a Ray instance for this run).
    num_workers (default None)
        ray: how many workers, each in its own actor (default: one per GPU in the cluster; 1 on CPU).
    gpus_per_worker (default None)
        ray: GPUs each worker holds (default: 1 on GPU, 0 on CPU).
    overwrite (default False)
        Replace an existing output instead of resuming it.
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes OUT (output=), a folder that datasets.load_from_disk(OUT) opens: the scored dataset (id, messages, input_ids, assistant_mask, logprobs, entropy, rank) as Arrow shards with state.json and dataset_info.json, and beside them ftprep.json (the settings, model and counts), stats.json and rejects.jsonl (each rejected row, with why). A rerun with the same settings resumes it.
    """
    ...


def regen(
    input: str | PathLike[str] | Dataset | list[dict[str, Any]],
    *,
    output: str | PathLike[str] | None = None,
    model: str = 'smollm2-135m',
    chat_template: str | PathLike[str] | None = None,
    format: Literal['messages', 'sharegpt', 'alpaca', 'prompt-completion'] | None = None,
    split: str | None = None,
    limit: int | None = None,
    train_on: Literal['all', 'last'] = 'all',
    mode: Literal['rephrase', 'self'] = 'rephrase',
    template: str | PathLike[str] | None = None,
    n: int = 4,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    seed: int = 0,
    length_ratio: float = 3.0,
    beat_ground_truth: bool = True,
    verify: Literal['none', 'math', 'exact', 'regex'] = 'none',
    pattern: str | None = None,
    backend: Literal['auto', 'hf', 'vllm'] = 'auto',
    batch_tokens: int | None = None,
    dtype: Literal['auto', 'float32', 'bfloat16', 'float16'] = 'auto',
    trust_remote_code: bool = False,
    device: str = 'auto',
    shard_rows: int = 1000,
    gpu_memory_utilization: float | None = None,
    max_num_batched_tokens: int | None = None,
    tensor_parallel_size: int = 1,
    engine: Literal['local', 'ray'] = 'local',
    ray_address: str | None = None,
    num_workers: int | None = None,
    gpus_per_worker: float | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> RunDataset:
    """Rewrite the assistant turns of INPUT with the model itself; keep the best checked rewrite, else the ground truth.

    `ftprep regen` as a function: the same settings, checks and files; it returns the dataset it wrote: a datasets.Dataset (ftprep.RunDataset) that also carries .output, .stats, .rejects,
    .rejected and .reject_reasons; rows rejected are also named in a RowsRejectedWarning.

    Parameters
    ----------
    input
        JSONL, JSON, Parquet or CSV file, a save_to_disk folder, or a hub dataset id. Also a list of rows (dicts) or a datasets.Dataset.
    output (default None)
        Folder for the regenerated dataset (messages format). Default: a new temporary folder (kept after the call; the dataset returned reads from it).
    model (default 'smollm2-135m')
        Alias, model folder, .gguf file or hub id (the model you will fine-tune).
    chat_template (default None)
        Jinja chat template file: for a model without one (a base model), or to override the model's own.
    format (default None)
        Input format (default: detected). One of: messages, sharegpt, alpaca, prompt-completion.
    split (default None)
        Split of a dataset folder or hub dataset (default: train).
    limit (default None)
        Only the first N rows.
    train_on (default 'all')
        Which assistant turns to rewrite. One of: all, last.
    mode (default 'rephrase')
        rephrase: the model sees the reference answer as a guide (SDFT); self: the original prompt alone. One of: rephrase, self.
    template (default None)
        rephrase: text file with {instruction} and {reference} (see --print-template).
    n (default 4)
        Candidates sampled per turn.
    temperature (default 0.7)
        Sampling temperature.
    top_p (default 0.95)
        Nucleus sampling mass.
    max_new_tokens (default 512)
        Longest candidate; longer ones are rejected.
    seed (default 0)
        Sampling seed: the same seed gives the same output.
    length_ratio (default 3.0)
        Reject candidates more than this many times longer or shorter than the reference.
    beat_ground_truth (default True)
        Accept only rewrites the model finds likelier (lower perplexity) than the ground truth.
    verify (default 'none')
        math: same final number as the reference; exact: same normalized text; regex: same pattern= capture. One of: none, math, exact, regex.
    pattern (default None)
        verify= regex: the answer's pattern; group 1 (or the whole match) is compared.
    backend (default 'auto')
        Generation and scoring engine; auto: vllm on a CUDA GPU when installed, else hf. One of: auto, hf, vllm.
    batch_tokens (default None)
        hf scoring: token budget of one forward pass.
    dtype (default 'auto')
        auto: float32 on CPU, bfloat16 on a GPU that has it, else float16. One of: auto, float32, bfloat16, float16.
    trust_remote_code (default False)
        Let a model that ships its own Python code run it (only for models you trust).
    device (default 'auto')
        auto, cpu, cuda or cuda:N.
    shard_rows (default 1000)
        Input rows per output shard (the unit of resume).
    gpu_memory_utilization (default None)
        vllm: share of GPU memory (of RAM on CPU) vLLM takes (default: 0.85 on GPU, 0.3 on CPU).
    max_num_batched_tokens (default None)
        vllm: tokens per engine step; the logits peak grows with it (default on GPU: sized from the vocabulary and the free memory, 512 to 16384; 2048 on CPU).
    tensor_parallel_size (default 1)
        vllm: GPUs one model is split over, for a model one GPU cannot hold (on Ray, give each worker as many: gpus_per_worker= N).
    engine (default 'local')
        local: this process; ray: a Ray cluster (pip install 'ftprep[ray]'), with the same output. One of: local, ray.
    ray_address (default None)
        ray: the cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a Ray instance for this run).
    num_workers (default None)
        ray: how many workers, each in its own actor (default: one per GPU in the cluster; 1 on CPU).
    gpus_per_worker (default None)
        ray: GPUs each worker holds (default: 1 on GPU, 0 on CPU).
    overwrite (default False)
        Replace an existing output instead of resuming it.
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes OUT (output=), a folder that datasets.load_from_disk(OUT) opens: the regenerated conversations (id, messages: what ftprep score reads) as Arrow shards with state.json and dataset_info.json, and beside them ftprep.json (the settings, model and counts), stats.json and rejects.jsonl (each rejected row, with why). A rerun with the same settings resumes it.
    """
    ...


def mask(
    scored: str | PathLike[str] | Dataset,
    *,
    output: str | PathLike[str] | None = None,
    strategy: Literal['threshold', 'quantile', 'soft', 'delta', 'anchor', 'none'] = 'threshold',
    threshold: float = 2.5,
    quantile: float = 0.2,
    scope: Literal['sample', 'dataset'] = 'sample',
    weight_fn: Literal['gauss', 'prob'] = 'gauss',
    sigma: float = 0.75,
    alpha: float = 1.0,
    min_weight: float = 0.0,
    keep_eos: bool = True,
    min_kept: int = 1,
    weights: bool | None = None,
    target: Literal['hf', 'trl', 'axolotl', 'llama-factory'] = 'hf',
    keep_shared: bool = False,
    against: str | PathLike[str] | Dataset | None = None,
    delta: float = 2.5,
    anchors: Literal['first', 'all'] = 'all',
    confidence: float = 1.0,
    engine: Literal['local', 'ray'] = 'local',
    ray_address: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> RunDataset:
    """Turn SCORED into a training dataset: input_ids, attention_mask, labels (and loss_weights).

    `ftprep mask` as a function: the same settings, checks and files; it returns the dataset it wrote: a datasets.Dataset (ftprep.RunDataset) that also carries .output, .stats, .rejects,
    .rejected and .reject_reasons; rows rejected are also named in a RowsRejectedWarning.

    Parameters
    ----------
    scored
        A folder written by ftprep score. Also the dataset an ftprep function returned.
    output (default None)
        Folder for the training dataset. Default: a new temporary folder (kept after the call; the dataset returned reads from it).
    strategy (default 'threshold')
        How scores become labels or weights: threshold: label -100 on assistant tokens with perplexity above threshold= (STM); quantile: mask the quantile= share of assistant tokens with the highest perplexity, per row or over the dataset; soft: keep every label and write loss_weights from the perplexity (weight_fn=); delta: label -100 where perplexity under the against= model exceeds this one's by more than delta=; anchor: labels only on anchors (tokens the model ranks below its greedy choice), reference top-k as KL targets elsewhere; none: loss on assistant tokens only, the plain SFT baseline. One of: threshold, quantile, soft, delta, anchor, none.
    threshold (default 2.5)
        threshold: mask assistant tokens with perplexity above this.
    quantile (default 0.2)
        quantile: share of assistant tokens to mask.
    scope (default 'sample')
        quantile: per row or over the dataset. One of: sample, dataset.
    weight_fn (default 'gauss')
        soft: exp(-((ppl-1)/sigma)^2) or p^alpha. One of: gauss, prob.
    sigma (default 0.75)
        soft gauss width.
    alpha (default 1.0)
        soft prob exponent.
    min_weight (default 0.0)
        soft: weights below this are raised to it.
    keep_eos (default True)
        Keep end-of-turn tokens supervised (so the model learns to stop).
    min_kept (default 1)
        Reject rows left with fewer supervised tokens.
    weights (default None)
        Write loss_weights (default: only for soft).
    target (default 'hf')
        Trainer the columns are for: hf keeps loss_weights; trl, axolotl and llama-factory get input_ids, attention_mask, labels only (axolotl with strategy= anchor: also its KD plugin's target_* columns). One of: hf, trl, axolotl, llama-factory.
    keep_shared (default False)
        Keep supervised the tokens the mask would remove from what most rows share (a fixed closing phrase or format marker); one pass over the dataset first; hard strategies only.
    against (default None)
        delta: the same input scored with a second model (ftprep score --model B). Also the dataset an ftprep function returned.
    delta (default 2.5)
        delta: mask assistant tokens whose perplexity under the against= model exceeds the one in SCORED by more than this.
    anchors (default 'all')
        anchor: label every assistant token the model ranks below its greedy choice (the paper's rule under teacher forcing), or only the first of each assistant turn. One of: first, all.
    confidence (default 1.0)
        anchor: c_t, the anchors' target is c_t x their label + (1 - c_t) x the reference distribution.
    engine (default 'local')
        local: this process; ray: a Ray cluster (pip install 'ftprep[ray]'), with the same output. One of: local, ray.
    ray_address (default None)
        ray: the cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a Ray instance for this run).
    overwrite (default False)
        Replace an existing output instead of resuming it.
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes OUT (output=), a folder that datasets.load_from_disk(OUT) opens: the training dataset (input_ids, attention_mask, labels, and the strategy's own columns) as Arrow shards with state.json and dataset_info.json, and beside them ftprep.json (the settings, model and counts), stats.json and rejects.jsonl (each rejected row, with why). A rerun with the same settings resumes it.
    """
    ...


def inspect(
    folder: str | PathLike[str] | Dataset,
    *,
    row: int = 0,
    threshold: float = 2.5,
    color: bool | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> str:
    """Show one row's tokens, with masked or low-weight tokens marked, and its numbers.

    `ftprep inspect` as a function: the same settings, checks and files; it returns the row as text: its tokens (masked ones in [brackets], or coloured with color=True) and its numbers.

    Parameters
    ----------
    folder
        A folder written by ftprep score, regen or mask. Also the dataset an ftprep function returned.
    row (default 0)
        Row number (0-based).
    threshold (default 2.5)
        Scored datasets: mark what ftprep mask threshold= would mask (perplexity above this; end-of-turn tokens stay supervised).
    color (default None)
        Colour (default: on a terminal, unless NO_COLOR is set).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes nothing: prints the row.
    """
    ...


def stats(
    folder: str | PathLike[str] | Dataset,
    *,
    quiet: bool = False,
    verbose: bool = False,
) -> dict:
    """Print the stats of a scored or training dataset.

    `ftprep stats` as a function: the same settings, checks and files; it returns the folder's stats.json, as a dict.

    Parameters
    ----------
    folder
        A folder written by ftprep score, regen or mask. Also the dataset an ftprep function returned.
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes nothing: prints FOLDER's stats.json as a table (--json: as JSON).
    """
    ...


def report(
    folder: str | PathLike[str] | Dataset,
    *,
    output: str | PathLike[str] = 'report.html',
    threshold: float = 2.5,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> Path:
    """Write one self-contained HTML page for FOLDER: plots, most masked tokens, settings, a table of rows.

    `ftprep report` as a function: the same settings, checks and files; it returns the HTML file it wrote.

    Parameters
    ----------
    folder
        A folder written by ftprep score or mask. Also the dataset an ftprep function returned.
    output (default 'report.html')
        HTML file to write.
    threshold (default 2.5)
        Scored datasets: preview ftprep mask threshold= at this perplexity (the masked tokens and the line on the perplexity plot).
    overwrite (default False)
        Replace an existing output at output= (without it, one is refused).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes the HTML file output= (default: report.html): one self-contained page, images and data inside.
    """
    ...


def export_config(
    folder: str | PathLike[str] | Dataset,
    *,
    target: Literal['hf', 'trl', 'axolotl', 'llama-factory'] = 'trl',
    base_model: str | None = None,
    output: str | PathLike[str] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> str:
    """Print a ready-to-use training snippet for FOLDER (TRL Python, Axolotl or LLaMA-Factory YAML).

    `ftprep export-config` as a function: the same settings, checks and files; it returns the snippet (also written to output= where given).

    Parameters
    ----------
    folder
        A folder written by ftprep mask. Also the dataset an ftprep function returned.
    target (default 'trl')
        Trainer to print a snippet for (hf and trl print the same TRL Python). One of: hf, trl, axolotl, llama-factory.
    base_model (default None)
        Model the snippet trains: a hub id or a local folder (default: the model that scored: the hub id or folder --model named; for the embedded alias or a .gguf file, ftprep's dense copy of it).
    output (default None)
        File to write the snippet to (e.g. train.py or axolotl.yaml) instead of printing it.
    overwrite (default False)
        Replace an existing output at output= (without it, one is refused).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes nothing unless output= FILE: prints the snippet (with output=, writes it to FILE).
    """
    ...


def export(
    folder: str | PathLike[str] | Dataset,
    *,
    parquet: str | PathLike[str],
    config_name: str = 'default',
    license: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> Path:
    """Write FOLDER as Parquet files and a dataset card to a local folder, as push uploads them (no token): datasets.load_dataset(DIR) and trl sft read it.

    `ftprep export` as a function: the same settings, checks and files; it returns the folder it wrote (--parquet), which datasets.load_dataset(folder) opens.

    Parameters
    ----------
    folder
        A folder written by ftprep score or mask. Also the dataset an ftprep function returned.
    parquet
        Folder to write: new, empty, or one an earlier export wrote (its other configs are kept).
    config_name (default 'default')
        Config (subset) the files become; several configs can share DIR.
    license (default None)
        License in the card's metadata (default: the card's, else other).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes DIR (parquet=): README.md (the dataset card, with the config), the config's Parquet files under data/ (another config's under its name), the perplexity histogram image, and .ftprep-push/ (the staged files a rerun reuses).
    """
    ...


def push(
    folder: str | PathLike[str] | Dataset,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    config_name: str = 'default',
    license: str | None = None,
    files_per_commit: int = 50,
    quiet: bool = False,
    verbose: bool = False,
) -> str:
    """Upload FOLDER to the Hub as dataset REPO_ID: Parquet files and a dataset card.

    `ftprep push` as a function: the same settings, checks and files; it returns the line on what it pushed, where (the repo's URL) and how many files.

    Parameters
    ----------
    folder
        A folder written by ftprep score or mask. Also the dataset an ftprep function returned.
    repo_id
        The dataset repo, user/name.
    private (default False)
        Create the repo private (an existing repo keeps its visibility).
    revision (default None)
        Branch to push to, created when missing (default: main).
    create_pr (default False)
        Open a pull request with the changes instead of committing to the branch.
    config_name (default 'default')
        Config (subset) the files become; several configs can share a repo.
    license (default None)
        License in the card's metadata (default: the repo card's, else other).
    files_per_commit (default 50)
        Parquet files per commit; a rerun after an interruption skips committed files.
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes FOLDER/.ftprep-push/ (the staged Parquet files and card, reused by a rerun) and uploads them to REPO_ID.
    """
    ...


def hft_plan(
    *,
    output: str | PathLike[str],
    model: str = 'smollm2-135m',
    ratio: float = 0.5,
    seed: int = 0,
    train_embeddings: bool = False,
    train_norms: bool = False,
    axolotl_yaml: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> dict:
    """Half fine-tuning (HFT): choose per layer which half of the projections trains; the rest stays frozen.

    `ftprep hft-plan` as a function: the same settings, checks and files; it returns the plan (what -o holds): per layer the projections that train, and the totals.

    Parameters
    ----------
    output
        JSON file for the plan.
    model (default 'smollm2-135m')
        Alias, model folder or hub id; only its config is read.
    ratio (default 0.5)
        Share of each layer's attention and feed-forward projections that trains.
    seed (default 0)
        Seed of the random choice of projections.
    train_embeddings (default False)
        Also train the token embeddings (and an untied lm_head).
    train_norms (default False)
        Also train the norm weights.
    axolotl_yaml (default None)
        Also write the plan as Axolotl `unfrozen_parameters` to this file.
    overwrite (default False)
        Replace an existing output at output= (without it, one is refused).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes OUT (output=, the plan as JSON), OUT.ftprep.json (how it was made) and, with axolotl_yaml= FILE, FILE (Axolotl's unfrozen_parameters).
    """
    ...


def iv(
    input: str | PathLike[str] | Dataset | list[dict[str, Any]],
    *,
    output: str | PathLike[str],
    model: str = 'smollm2-135m',
    chat_template: str | PathLike[str] | None = None,
    trust_remote_code: bool = False,
    format: Literal['messages', 'sharegpt', 'alpaca', 'prompt-completion'] | None = None,
    split: str | None = None,
    limit: int | None = None,
    prompts: int = 16,
    heads: int = 10,
    answer_tokens: int = 4,
    layers: str | None = None,
    seed: int = 0,
    dtype: Literal['auto', 'float32', 'bfloat16', 'float16'] = 'auto',
    device: str = 'auto',
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> dict:
    """Extract INPUT's instruction vector: the heads that carry its task, summed per layer (arXiv 2406.12227).

    `ftprep iv` as a function: the same settings, checks and files; it returns its report (OUT.json): the heads kept, their scores, the layers and settings.

    Parameters
    ----------
    input
        JSONL, JSON, Parquet or CSV file, a save_to_disk folder, or a hub dataset id. Also a list of rows (dicts) or a datasets.Dataset.
    output
        The .safetensors file for the vectors; OUT.json beside it gets the heads and scores.
    model (default 'smollm2-135m')
        Alias, model folder, .gguf file or hub id (the model you will fine-tune).
    chat_template (default None)
        Jinja chat template file: for a model without one (a base model), or to override the model's own.
    trust_remote_code (default False)
        Let a model that ships its own Python code run it (only for models you trust).
    format (default None)
        Input format (default: detected). One of: messages, sharegpt, alpaca, prompt-completion.
    split (default None)
        Split of a dataset folder or hub dataset (default: train).
    limit (default None)
        Only the first N rows.
    prompts (default 16)
        Rows (drawn with seed=) whose prompts are averaged over and patched into.
    heads (default 10)
        Heads kept: those whose patching restores the answer most.
    answer_tokens (default 4)
        First answer tokens whose log-probability measures a head's effect.
    layers (default None)
        Layers to measure, e.g. 0-9,12 (default: all); fewer layers, less time.
    seed (default 0)
        Seed of the rows drawn and of the shuffled instructions.
    dtype (default 'auto')
        auto: float32 on CPU, bfloat16 on a GPU that has it, else float16. One of: auto, float32, bfloat16, float16.
    device (default 'auto')
        auto, cpu, cuda or cuda:N.
    overwrite (default False)
        Replace an existing output at output= (without it, one is refused).
    quiet (default False)
        Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.
    verbose (default False)
        Also print what was resolved (model, device, dtype, backend), each shard as it is committed, and what caused an error.

    Writes OUT (output=, the vectors, .safetensors), OUT.json beside it (the heads and their scores) and OUT.ftprep.json (how it was made).
    """
    ...
