"""The notebook layer: the ``%nws`` magics (``magics``), the kernel spec of the
"Python 3 (workbench)" kernel (``kernelspec``) and the dashboards (``widgets``, their plots
drawn by ``plots``).

Only this package imports IPython and ipywidgets, and only in the modules that need them, so
importing ``workbench.jupyter`` stays cheap (sleigh workers import ``cells`` from it).
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext workbench`` (or ``workbench.jupyter``, as the workbench kernel loads it):
    register ``%nws`` and ``%%nws_each`` on this shell, once: loading again keeps the magics'
    session (its workspace, broker and sleigh)."""
    from .magics import NwsMagics

    if "NwsMagics" not in ipython.magics_manager.registry:
        ipython.register_magics(NwsMagics(ipython))
