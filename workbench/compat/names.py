"""The old import names and the workbench faces they stand for: which module answers
``import nws.client``, ``import memcache``, ... under ``workbench.compat``, and why the few
names that have no face here have none. Pure data, read by ``finder``."""

from __future__ import annotations

from typing import NamedTuple

#: Where a user reads what differs from each original, named in every error about an old name.
DOCS_PAGE = "the docs page \"Running old scripts\" (docs/compat.md)"


class Face(NamedTuple):
    """What an old module name becomes. ``module`` is the workbench module that answers it.
    ``alias``: the old name is that very module (a script that sets one of its settings, such
    as ``memcache.SERVER_MAX_VALUE_LENGTH``, sets the face's). Otherwise the old name is a
    module of its own that reads its names from ``module``: for an old module whose names the
    workbench keeps in several places (``nws.client``), and for an old package whose
    submodules must not become attributes of the face (``berrymq``). ``package``: the old name
    had submodules."""

    module: str
    alias: bool = True
    package: bool = False


#: Each old module a script may import, for the three originals and the seed's wrpme. The
#: originals' own layouts: NetWorkSpaces 1.6 (``nws``: ``client``, ``sleigh``, ``babelfish``,
#: ``util``), berryMQ 0.3 (``berrymq``: ``berrymq``, ``connect``, ``adapter.*``, ``jsonrpc.*``),
#: python-memcached 1.60 (the single module ``memcache``), wrpme (the single module ``wrpme``).
FACES: dict[str, Face] = {
    # the package's own names (``__version__``); ``client`` and ``sleigh`` load on first touch,
    # as the original's ``import client, sleigh`` made them available after ``import nws``
    "nws": Face("workbench._version", alias=False, package=True),
    "nws.client": Face("workbench", alias=False),
    "nws.sleigh": Face("workbench.sleigh"),
    "berrymq": Face("workbench.mq", alias=False, package=True),
    "berrymq.berrymq": Face("workbench.mq", alias=False),
    "berrymq.connect": Face("workbench.mq.connect"),
    "berrymq.adapter": Face("workbench.mq.adapter"),
    "berrymq.adapter.timer": Face("workbench.mq.adapter.timer"),
    "berrymq.adapter.fileobserver": Face("workbench.mq.adapter.fileobserver"),
    "memcache": Face("workbench.memcache"),
    "wrpme": Face("workbench.hive"),
}

#: Old modules the workbench has no face for, and why.
NO_FACE: dict[str, str] = {
    "nws.babelfish": "the babelfish was a process that translated values for NetWorkSpaces' "
                     "web interface; run `workbench babelfish` for `workbench web` instead "
                     "(docs/security.md says when)",
    "nws.util": "its helpers (`which`, `msc_quote`) served the original's launchers; "
                "`shutil.which` and `subprocess` do their work",
    "berrymq.jsonrpc": "berryMQ's own JSON-RPC transport between processes; here the broker "
                       "carries messages (`berrymq.connect` keeps its functions)",
    "berrymq.adapter.growl": "it forwarded messages to Growl, a desktop program",
    "berrymq.adapter.wxpython": "it turned messages into wxPython events in a desktop program",
}

#: The top-level names handled: any module under them that neither table names has no face.
ROOTS = frozenset(name.partition(".")[0] for name in FACES)


def no_face_reason(name: str) -> str | None:
    """Why the old module ``name`` has no workbench face, or None if it has one (or is not an
    old name at all)."""
    if name in FACES or name.partition(".")[0] not in ROOTS:
        return None
    for old in (name, *_parents(name)):
        if old in NO_FACE:
            return NO_FACE[old]
    return "the original had no such module, or the workbench keeps nothing of it"


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]
