"""Older import paths keep working: ``from diffedu.unet import UNet`` still finds `diffedu.models.unet`.

The networks moved to `diffedu.models` and the course machinery to `diffedu.course`; notebooks saved before
the move import them by their old names. This finder answers those names, and only those, with the module
at its new place (the same module object, imported when first asked for, so nothing is loaded twice).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

MOVED = {
    **{f"diffedu.{name}": f"diffedu.models.{name}"
       for name in ("classifier", "layers", "mlp", "text", "unet", "vae")},
    **{f"diffedu.{name}": f"diffedu.course.{name}"
       for name in ("checks", "lessons", "plotting", "profiles", "widgets")},
    "diffedu.checks_scaling": "diffedu.course.checks.lesson06",
    "diffedu.checks_vae": "diffedu.course.checks.lesson07",
    "diffedu.checks_guidance": "diffedu.course.checks.lesson08",
    "diffedu.checks_text": "diffedu.course.checks.lesson09",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new place."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.new)
        self._spec = module.__spec__  # the import system overwrites __spec__ with the alias's; put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, so that ``python -m diffedu.lessons`` still runs `diffedu.course.lessons`."""
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new) if spec is not None and spec.loader is not None else None


class OldPathFinder(importlib.abc.MetaPathFinder):
    """A meta path finder for the names in `MOVED`; every other name goes to Python's own finders."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        target = importlib.util.find_spec(new)  # its file names the command in `python -m diffedu.lessons`
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), origin=target.origin if target else None)


def install() -> None:
    """Add the finder to `sys.meta_path` once."""
    if not any(isinstance(finder, OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(OldPathFinder())
