"""``Sleigh(launch=...)``'s launchers under a short name: ``workbench.sleigh.launch.Batch``
(batch jobs through PSI/J) and the others of ``launchers``."""

from __future__ import annotations

from .launchers import Batch, FunctionLauncher, Launcher, LocalLauncher, SshLauncher

__all__ = ["Batch", "FunctionLauncher", "Launcher", "LocalLauncher", "SshLauncher"]
