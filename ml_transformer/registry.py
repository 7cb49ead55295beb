"""Things chosen by name in configs: registries mapping a name to `module:attribute`."""

from __future__ import annotations

import importlib


def resolve(registry: dict[str, str], name: str, field: str):
    """The attribute registered as `name`, its module imported now; ValueError naming the
    config `field` and the known names if there is none."""
    if name not in registry:
        raise ValueError(f"{field}: unknown name {name!r} (one of {', '.join(sorted(registry))})")
    module, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module), attribute)
