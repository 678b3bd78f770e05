"""ftprep/__init__.pyi: the functions of ftprep.api spelled out for editors and type checkers.

The functions are made when first asked for (their parameters come from the commands' settings),
which an editor cannot run; it reads this stub instead (PEP 561: `py.typed` says the package
has types), so `ftprep.mask(scored, thr` completes to `threshold=` with its type and default.
The stub is written from the same signatures the functions have:

    python scripts/write-api-stub.py      # after a setting is added, renamed or removed

tests/test_api_stub.py fails while the stub and the settings differ.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

STUB = Path(__file__).with_name("__init__.pyi")
HEADER = '''"""ftprep: rewrite SFT datasets so fine-tuning forgets less (signatures for editors; written by
scripts/write-api-stub.py from the commands' settings: do not edit by hand)."""
'''
# Names the stub re-exports as they are, and where they live.
EXPORTS = {"FtprepError": "ftprep.stages.errors", "RowError": "ftprep.stages.errors",
           "RowsRejectedWarning": "ftprep.results", "RunDataset": "ftprep.results"}


def render_stub() -> str:
    """The text of ftprep/__init__.pyi for the settings declared now."""
    import ftprep
    from ftprep.api import FUNCTIONS, function

    imports: set[tuple[str, str]] = set()
    functions = [render_function(name, function(name), imports) for name in FUNCTIONS]
    imports -= {(module, name) for name, module in EXPORTS.items()}  # re-exported below
    lines = [HEADER, import_block(imports), "", f"__all__ = {list(ftprep.__all__)!r}", "__version__: str", "", *functions]
    return "\n".join(lines).rstrip() + "\n"


def import_block(imports: set[tuple[str, str]]) -> str:
    """The stub's imports as isort (ruff's I rule) orders them: the standard library, other
    packages, ftprep; one line per module, a re-export (`X as X`) on a line of its own."""
    import sys

    modules: dict[str, set[str]] = {}
    for module, name in imports:
        modules.setdefault(module, set()).add(name)
    lines = [(module, f"from {module} import {', '.join(sorted(names))}") for module, names in modules.items()]
    lines += [(module, f"from {module} import {name} as {name}") for name, module in EXPORTS.items()]

    def group(module: str) -> int:
        root = module.split(".")[0]
        return 0 if root in sys.stdlib_module_names else 2 if root == "ftprep" else 1

    groups: dict[int, list[tuple[str, str]]] = {}
    for module, line in lines:
        groups.setdefault(group(module), []).append((module, line))
    return "\n\n".join("\n".join(line for _, line in sorted(groups[key])) for key in sorted(groups))


def render_function(name: str, function, imports: set) -> str:
    signature = inspect.signature(function)
    parameters, keyword_only = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and not keyword_only:
            parameters.append("*")
            keyword_only = True
        text = f"{parameter.name}: {annotation_text(parameter.annotation, imports)}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {parameter.default!r}"
        parameters.append(text)
    returns = annotation_text(signature.return_annotation, imports)
    doc = (function.__doc__ or "").replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    body = "\n".join(f"    {line}" if line else "" for line in f'"""{doc}\n"""'.split("\n"))
    arguments = "".join(f"\n    {parameter}," for parameter in parameters)
    return f"def {name}({arguments}\n) -> {returns}:\n{body}\n    ...\n\n"


def annotation_text(hint, imports: set) -> str:
    """A type as the stub spells it, adding the imports it needs to `imports`."""
    if hint is type(None) or hint is None:
        return "None"
    if hint is Any:
        imports.add(("typing", "Any"))
        return "Any"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " | ".join(annotation_text(arg, imports) for arg in args)
    if origin is Literal:
        imports.add(("typing", "Literal"))
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None:
        return f"{annotation_text(origin, imports)}[{', '.join(annotation_text(arg, imports) for arg in args)}]"
    if hint.__module__ == "builtins":
        return hint.__qualname__
    module = PUBLIC_MODULES.get(hint.__module__, hint.__module__)
    imports.add((module, hint.__qualname__))
    return hint.__qualname__


# Where a class is imported from in the stub: the name users know (datasets.Dataset), not the
# module that defines it.
PUBLIC_MODULES = {"datasets.arrow_dataset": "datasets", "posixpath": "os", "pathlib._local": "pathlib"}


def write_stub() -> Path:
    STUB.write_text(render_stub(), encoding="utf-8")
    return STUB
