"""The compiled parts (``workbench/accel.py``); everything else is in ``pyproject.toml``.

Each extension is optional: where it cannot be built (no C compiler, no Python headers) the
package installs without it, and the code takes the Python path, with the same results.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    # the client's fast lane: a small request and its reply in one call
    Extension("workbench._lane", sources=["workbench/_lane.c"], depends=["workbench/_accel.h"],
              optional=True),
    # the broker's fast pass: a read's small requests handled, their replies written, in one
    Extension("workbench._broker_pass", sources=["workbench/_broker_pass.c"],
              depends=["workbench/_accel.h"], optional=True),
    # the key-value service's usual set and get, fused
    Extension("workbench._kv_pass", sources=["workbench/_kv_pass.c"],
              depends=["workbench/_accel.h"], optional=True),
])
