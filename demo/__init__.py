"""The closed-loop demo: cloud, a charging hub and a home with their twins and BMSs.

Example::

    from demo import DemoConfig, run_demo

    summary, outputs = run_demo(DemoConfig(days=1.0, out_dir=Path("out/demo")))

The names load on first use, so ``batterytwin --help`` does not import the cloud.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from demo.config import DemoConfig
    from demo.run import DemoHooks, run_demo

__all__ = ["DemoConfig", "DemoHooks", "run_demo"]

_HOMES = {"DemoConfig": "demo.config", "DemoHooks": "demo.run", "run_demo": "demo.run"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'demo' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
