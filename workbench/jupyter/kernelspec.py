"""The "Python 3 (workbench)" kernel: an IPython kernel that loads the workbench extension at
start, so ``%nws`` works in its first cell. ``workbench kernel install`` writes its spec.

It loads the extension as ``workbench.jupyter``, not ``workbench``: a notebook that also runs in
other kernels starts with ``%load_ext workbench``, and IPython answers a second load of the same
name with "already loaded" in the notebook's first output. Under the other name that load finds
the magics registered and does nothing.

``kernels/workbench/kernel.json`` in the source tree is ``kernel_spec("python")``; installing
writes the spec with this interpreter's path instead, so the kernel runs where workbench is.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from ..config import KERNEL_DISPLAY_NAME as DISPLAY_NAME, KERNEL_NAME


def kernel_spec(python: str | None = None, display_name: str = DISPLAY_NAME) -> dict:
    """The kernel.json contents for a kernel run by ``python`` (default: this interpreter)."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f",
                 "{connection_file}", "--ext", "workbench.jupyter"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install(user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME,
            display_name: str = DISPLAY_NAME) -> str:
    """Install the kernel spec (for this user, under ``prefix``, or system-wide) -> the
    directory it went to. Needs jupyter_client."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as source:
        with open(os.path.join(source, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(kernel_spec(display_name=display_name), f, indent=1)
            f.write("\n")
        return KernelSpecManager().install_kernel_spec(source, kernel_name=name, user=user,
                                                       prefix=prefix)
