"""The import hook behind ``workbench.compat``: a ``sys.meta_path`` finder that answers the old
names of ``names.FACES`` with the workbench's faces, and refuses the old names that have none
with an error that says why. It writes no file and installs no package."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

from .names import DOCS_PAGE, FACES, no_face_reason


class OldNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the old names. An alias is loaded by putting its face into
    ``sys.modules`` in place of the fresh module the import system made (the statement binds
    what ``sys.modules`` holds once the loader returns), so the face itself is never touched:
    its ``__spec__`` and ``__name__`` stay its own. A view is that fresh module, given a
    ``__getattr__`` that reads its names from the face."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        face = FACES.get(fullname)
        if face is None:
            reason = no_face_reason(fullname)
            if reason is None:
                return None  # not an old name: the other finders look for it
            raise ModuleNotFoundError(
                f"the workbench has no face for {fullname!r}: {reason}. The differences "
                f"from the originals are listed on {DOCS_PAGE}", name=fullname)
        # the origin shows in the module's repr: <module 'nws.client' (workbench.compat: ...)>
        return importlib.machinery.ModuleSpec(fullname, self, is_package=face.package,
                                              origin=f"workbench.compat: {face.module}")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the import system's fresh module: a view's own, an alias's placeholder

    def exec_module(self, module: ModuleType) -> None:
        face = FACES[module.__name__]
        target = importlib.import_module(face.module)
        if face.alias:
            sys.modules[module.__name__] = target
            return
        module.__file__ = getattr(target, "__file__", None)
        if hasattr(target, "__all__"):
            module.__all__ = list(target.__all__)
        module.__getattr__, module.__dir__ = _view_names(module.__name__, target)


def _view_names(name: str, face: ModuleType
                ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """-> the ``__getattr__`` and ``__dir__`` of the view ``name`` of ``face``: its old
    submodules first (``nws.client``, not the workbench's own ``workbench.client``), then the
    face's public names (those of its ``__all__`` when it has one)."""
    submodules = {old.rpartition(".")[2] for old in FACES if old.rpartition(".")[0] == name}
    public = set(getattr(face, "__all__", ())) or {
        attr for attr in dir(face) if not attr.startswith("_")}
    public.add("__version__")

    def __getattr__(attr: str) -> Any:
        if attr in submodules:
            return importlib.import_module(f"{name}.{attr}")
        if attr in public and hasattr(face, attr):
            return getattr(face, attr)
        raise AttributeError(f"module {name!r} (answered by {face.__name__}) has no "
                             f"attribute {attr!r}; see {DOCS_PAGE}")

    def __dir__() -> list[str]:
        return sorted(submodules | {attr for attr in public if hasattr(face, attr)})

    return __getattr__, __dir__
