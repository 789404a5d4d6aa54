"""Find a user's object by reference: ``package.module:name`` or ``path/to/file.py:name``.

Used for user tasks (``--task my_pkg.tasks:TASK``) and custom model factories
(``ModelSpec(arch="custom", factory=...)``). A file is imported once per
resolved path and registered in ``sys.modules`` under a stable synthetic name,
so a factory written as ``f"{__name__}:build"`` inside that file resolves back
to the same module. Invariant: standard library only.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _module_from_file(path: Path, ref: str) -> ModuleType:
    resolved = path.resolve()
    if not resolved.is_file():
        raise ValueError(f"{ref!r}: no such file {resolved}")
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"_fedmq_file_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"{ref!r}: cannot import {resolved} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def locate(ref: str) -> object:
    """The object ``ref`` names; the part after the last ``:`` may be dotted.

    Raises:
        ValueError: for a malformed reference, a module that cannot be
            imported, or a missing attribute, naming ``ref``.
    """
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise ValueError(f"{ref!r}: expected 'package.module:name' or 'path/to/file.py:name'")
    if module_ref.endswith(".py"):
        module = _module_from_file(Path(module_ref), ref)
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as exc:
            raise ValueError(f"{ref!r}: cannot import module {module_ref!r} ({exc})") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{ref!r}: {module_ref} has no attribute {attr!r}") from None
    return obj
