"""Ready-to-use training snippets for a training folder written by `ftprep mask`."""

from __future__ import annotations

import json
from pathlib import Path

from ftprep.manifest import ModelInfo, open_run
from ftprep.models import EMBEDDED_MODEL_ORIGINS
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask_settings import MaskStageSettings, check_export_target, describe
from ftprep.writers import read_shards

TRL_SNIPPET = '''\
# Train with TRL on {where} ({strategy}{weights_note}).
import torch
from datasets import {loader}
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
{weights_import}
{model_note}model_path = {model!r}
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)
dataset = {load}  # input_ids, attention_mask, labels{weights_column}: used as they are

# max_length=None: the rows are as long as ftprep score allowed (--max-length); TRL's own
# truncation would cut input_ids and labels but not the other per-token columns.
# Precision from the machine this runs on: bf16 on a GPU that has it, fp16 on an older GPU, fp32 on the CPU.
gpu = torch.cuda.is_available()
bf16 = gpu and torch.cuda.is_bf16_supported()
args = SFTConfig(output_dir="ftprep-sft", num_train_epochs=1, per_device_train_batch_size=4, max_length=None,
                 use_cpu=not gpu, bf16=bf16, fp16=gpu and not bf16{weights_args})
trainer = {trainer}(model=model, args=args, train_dataset=dataset, processing_class=tokenizer{weights_collator})
trainer.train()
'''

# The dataset and training part of every Axolotl config ftprep prints.
AXOLOTL_TRAINING = '''\
datasets:
  - path: {folder}
    type:
sequence_len: {sequence_len}
output_dir: ./ftprep-axolotl
micro_batch_size: 4
num_epochs: 1
learning_rate: 2.0e-5
# bf16 where the GPU has it; fp16 stays off, so the CPU (and a GPU without bf16) train in fp32
# (on such a GPU, fp16: true halves the memory). Axolotl's default would pick fp16 on the CPU.
bf16: auto
fp16: false
'''

AXOLOTL_SNIPPET = '''\
# Axolotl: {folder} is a save_to_disk folder, already tokenized (Axolotl opens a local folder
# with load_from_disk); an empty `type:` makes it use the columns as they are.
{model_note}base_model: {model}
''' + AXOLOTL_TRAINING

AXOLOTL_KD_SNIPPET = '''\
# Axolotl's KD plugin on {folder} (ftprep mask --strategy anchor --target axolotl): labels on the
# anchors take cross-entropy; target_token_ids/target_logprobs/target_mask hold the reference
# model's top-k on the other assistant tokens (position i: the distribution of token i + 1,
# renormalized), which the plugin's KL keeps the model close to.
{model_note}base_model: {model}
plugins:
  - axolotl.integrations.kd.KDPlugin
kd_trainer: true
kd_ce_alpha: 1.0          # cross-entropy on the anchors
kd_alpha: 1.0             # KL on the other assistant tokens
kd_beta: 1.0              # reverse KL, KL(p_theta || p_ref), as ftprep's anchor_kl_loss; 0.0: forward KL
kd_normalize_topk: true   # p_theta renormalized over the top-k, as anchor_kl_loss
kd_temperature: 1.0
''' + AXOLOTL_TRAINING

LLAMA_FACTORY_SNIPPET = '''\
# LLaMA-Factory: tokenized_path loads {folder} as it is and skips its own preprocessing.
# It trains in fp32 on the CPU and on a GPU (add bf16: true on a GPU that has bf16).
{model_note}model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: full
# LLaMA-Factory asks for a dataset name even with tokenized_path; it reads the data from
# tokenized_path alone and never looks this name up.
dataset: ftprep
tokenized_path: {folder}
cutoff_len: {sequence_len}
output_dir: ./ftprep-llama-factory
per_device_train_batch_size: 4
num_train_epochs: 1.0
learning_rate: 2.0e-5
'''


def longest_row(folder: Path) -> int:
    import pyarrow.compute as pc

    lengths = [pc.max(pc.list_value_length(table.column("input_ids"))).as_py() or 0 for table in read_shards(folder)]
    return max(lengths, default=0)


def default_base_model(model: ModelInfo) -> str:
    """The model a trainer starts from: the one that scored, since the masks describe its
    perplexities. Its folder where ftprep made one (the dense copy of the embedded alias or of a
    GGUF file: trainable offline, no download), else what --model named (a hub id, or the folder)."""
    return model.path


def base_model_note(model: ModelInfo, base_model: str | None) -> str:
    """Comment lines where the default is ftprep's dense copy of a quantized model: what it is,
    and the hub original it came from (a full-precision model, whose perplexities were not measured)."""
    made_by_ftprep = model.spec in EMBEDDED_MODEL_ORIGINS or model.spec.endswith(".gguf")
    if base_model is not None or not made_by_ftprep:
        return ""
    origin = EMBEDDED_MODEL_ORIGINS.get(model.spec)
    note = f"# {printable(model.path)}: ftprep's dense copy of {printable(model.spec)}, the model that scored.\n"
    if origin:
        note += (f"# {model.spec} was quantized from the hub model {origin}; to train that instead (needs network,\n"
                 f"# and its perplexities were not measured): --base-model {origin}\n")
    return note


def export_config(folder: Path, target: str, base_model: str | None = None) -> str:
    """The snippet for `target`; `base_model` (default: default_base_model) is the model it trains."""
    manifest = open_run(folder, stages=("mask",), refusal=f"{folder} is not a training dataset (no ftprep.json from "
                        "ftprep mask): run ftprep mask first")
    if not manifest.rows_out:
        raise FtprepError(f"{folder} has no rows (all were rejected: see its rejects.jsonl): there is nothing to train on")
    settings = manifest.settings_as(MaskStageSettings)
    check_export_target(settings, str(folder), target)
    features = json.loads((folder / "dataset_info.json").read_text())["features"]
    has_weights = "loss_weights" in features
    has_anchors = "kl_mask" in features  # ftprep's KL-target layout, for ftprep.trainer
    has_kd_targets = "target_token_ids" in features  # Axolotl's KD layout
    values = {
        "folder": str(folder.resolve()),
        "model": base_model or default_base_model(manifest.model),
        "strategy": describe(settings),
        "sequence_len": longest_row(folder),
    }
    # YAML: paths and names as double-quoted scalars (JSON strings are valid YAML), so that a
    # '#', ': ' or a newline in them reads back as the same string.
    quoted = {**values, "folder": yaml_string(values["folder"]), "model": yaml_string(values["model"]),
              "model_note": base_model_note(manifest.model, base_model)}
    if target == "axolotl":
        return (AXOLOTL_KD_SNIPPET if has_kd_targets else AXOLOTL_SNIPPET).format(**quoted)
    if target == "llama-factory":
        return LLAMA_FACTORY_SNIPPET.format(**quoted)
    return trl_snippet(values["model"], values["strategy"], has_weights, values["folder"], f"load_from_disk({values['folder']!r})",
                       anchors=has_anchors, model_note=base_model_note(manifest.model, base_model))


def yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def trl_snippet(model: str, strategy: str, has_weights: bool, where: str, load: str, anchors: bool = False,
                model_note: str = "") -> str:
    """TRL training code for data that `load` (a `datasets` call, e.g. load_from_disk('train')) opens;
    `anchors`: the data holds KL targets (--strategy anchor), trained with ftprep.trainer's anchor loss."""
    anchored = {
        "weights_note": ", cross-entropy on anchors and KL to the reference top-k elsewhere",
        "weights_import": "from ftprep.trainer import AnchorKLCollator, with_anchor_kl  # pip install ftprep\n",
        "weights_column": ", ref_topk_ids, ref_topk_logprobs, kl_mask, anchor_confidence",
        "weights_args": ", remove_unused_columns=False",
        "trainer": "with_anchor_kl(SFTTrainer)",
        "weights_collator": ", data_collator=AnchorKLCollator(tokenizer.pad_token_id)",
    }
    weighted = {
        "weights_note": ", per-token loss_weights",
        "weights_import": "from ftprep.trainer import TokenWeightCollator, with_token_weights  # pip install ftprep\n",
        "weights_column": ", loss_weights",
        "weights_args": ", remove_unused_columns=False",
        "trainer": "with_token_weights(SFTTrainer)",
        "weights_collator": ", data_collator=TokenWeightCollator(tokenizer.pad_token_id)",
    }
    plain = dict.fromkeys(weighted, "") | {"trainer": "SFTTrainer"}
    loader = load.split("(")[0]
    # `where` goes into a comment: quoted where it holds a newline or another control character.
    return TRL_SNIPPET.format(model=model, model_note=model_note, strategy=printable(strategy), where=printable(where),
                              loader=loader, load=load,
                              **(anchored if anchors else weighted if has_weights else plain))


def printable(text: str) -> str:
    """`text` as it can stand in a one-line comment: quoted where it holds a newline or another control character."""
    return text if text.isprintable() else repr(text)
