"""Files of a run's workdir: resolved config, JSON results (written atomically)."""

from __future__ import annotations

import json
import os


def save_json(path: str, obj) -> None:
    """Writes JSON atomically (temp file, then rename), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def save_config(workdir: str, config) -> None:
    """`workdir/config.json`: the resolved config of the run."""
    save_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
