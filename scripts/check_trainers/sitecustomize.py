"""Put on PYTHONPATH by scripts/check-trainers.sh for a trainer's run: when FTPREP_RECORD_BATCHES names a
file, every batch a transformers Trainer trains on is appended to it (one JSON line: input_ids,
attention_mask, labels), so that the check sees the labels the model saw. Neither the trainer nor
its config changes."""

import os

_record = os.environ.get("FTPREP_RECORD_BATCHES")
if _record:
    import json

    import transformers

    _training_step = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        batch = {key: inputs[key].tolist() for key in ("input_ids", "attention_mask", "labels") if key in inputs}
        with open(_record, "a", encoding="utf-8") as out:
            out.write(json.dumps(batch) + "\n")
        return _training_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step
