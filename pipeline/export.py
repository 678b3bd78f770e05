"""Ready-to-use training snippets for a training folder written by `ftprep mask`."""

from __future__ import annotations

import json
from pathlib import Path

from ftprep.stages.errors import FtprepError
from ftprep.stages.strategies import check_export_target, describe
from ftprep.writers import read_manifest, read_shards

TRL_SNIPPET = '''\
# Train with TRL on {where} ({strategy}{weights_note}).
from datasets import {loader}
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
{weights_import}
model_path = {model!r}
tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForCausalLM.from_pretrained(model_path)
dataset = {load}  # input_ids, attention_mask, labels{weights_column}: used as they are

# max_length=None: the rows are as long as ftprep score allowed (--max-length); TRL's own
# truncation would cut input_ids and labels but not the other per-token columns.
args = SFTConfig(output_dir="ftprep-sft", num_train_epochs=1, per_device_train_batch_size=4, max_length=None{weights_args})
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
'''

AXOLOTL_SNIPPET = '''\
# Axolotl: {folder} is a save_to_disk folder, already tokenized (Axolotl opens a local folder
# with load_from_disk); an empty `type:` makes it use the columns as they are.
base_model: {model}
''' + AXOLOTL_TRAINING

AXOLOTL_KD_SNIPPET = '''\
# Axolotl's KD plugin on {folder} (ftprep mask --strategy anchor --target axolotl): labels on the
# anchors take cross-entropy; target_token_ids/target_logprobs/target_mask hold the reference
# model's top-k on the other assistant tokens (position i: the distribution of token i + 1,
# renormalized), which the plugin's KL keeps the model close to.
base_model: {model}
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
model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: full
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


def export_config(folder: Path, target: str) -> str:
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") != "mask":
        raise FtprepError(f"{folder} is not a training dataset (no ftprep.json from ftprep mask): run ftprep mask first")
    if not manifest.get("counts", {}).get("rows_out"):
        raise FtprepError(f"{folder} has no rows (all were rejected: see its rejects.jsonl): there is nothing to train on")
    check_export_target(manifest["config"], str(folder), target)
    features = json.loads((folder / "dataset_info.json").read_text())["features"]
    has_weights = "loss_weights" in features
    has_anchors = "kl_mask" in features  # ftprep's KL-target layout, for ftprep.trainer
    has_kd_targets = "target_token_ids" in features  # Axolotl's KD layout
    values = {
        "folder": str(folder.resolve()),
        "model": manifest["model"]["path"],
        "strategy": describe(manifest["config"]),
        "sequence_len": longest_row(folder),
    }
    # YAML: paths and names as double-quoted scalars (JSON strings are valid YAML), so that a
    # '#', ': ' or a newline in them reads back as the same string.
    quoted = {**values, "folder": yaml_string(values["folder"]), "model": yaml_string(values["model"])}
    if target == "axolotl":
        return (AXOLOTL_KD_SNIPPET if has_kd_targets else AXOLOTL_SNIPPET).format(**quoted)
    if target == "llama-factory":
        return LLAMA_FACTORY_SNIPPET.format(**quoted)
    return trl_snippet(values["model"], values["strategy"], has_weights, values["folder"], f"load_from_disk({values['folder']!r})",
                       anchors=has_anchors)


def yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def trl_snippet(model: str, strategy: str, has_weights: bool, where: str, load: str, anchors: bool = False) -> str:
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
    where = where if where.isprintable() else repr(where)
    strategy = strategy if strategy.isprintable() else repr(strategy)
    return TRL_SNIPPET.format(model=model, strategy=strategy, where=where, loader=loader, load=load,
                              **(anchored if anchors else weighted if has_weights else plain))
