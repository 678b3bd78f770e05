"""What score and regen share: a run of the target model over the rows of an input source."""

from __future__ import annotations

from ftprep.manifest import ModelInfo
from ftprep.readers import open_source
from ftprep.runtime import resolve_runtime


class ModelRun:
    """Opens the input and resolves the model, device and dtype once, before any shard runs,
    so that a bad path, model or option fails before work starts."""

    made_from = "input"
    # Whether --dtype auto may pick bfloat16 on a CPU that multiplies it natively: scoring does;
    # generation keeps float32 there, as bfloat16 would change the text it writes.
    auto_bf16_on_cpu = False

    def __init__(self, settings, executor):
        self.settings = settings
        self.output = settings.output
        self.source = open_source(settings.input, settings.split, settings.limit)
        self.runtime = resolve_runtime(settings.model, settings.device, settings.dtype, settings.backend,
                                       executor.cuda_available(), chat_template=settings.chat_template,
                                       trust_remote_code=settings.trust_remote_code,
                                       cpu_bf16=None if self.auto_bf16_on_cpu else False)
        self.device = self.runtime.device

    def total_rows(self) -> int | None:
        return self.source.count()

    def shard_reads(self, executor):
        return executor.shard_reads(self.source, self.settings.shard_rows)


def model_info(runtime) -> ModelInfo:
    """The manifest's record of the model a run resolved."""
    return ModelInfo(**runtime.manifest())
