"""Shared by the tests: running `launch.py` as a user would."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, stdin=None, env=None) -> subprocess.CompletedProcess:
    """`python launch.py ARGS` from the repository root, output captured; `env` adds
    environment variables."""
    return subprocess.run(
        launch_command(*args), input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, **(env or {})},
    )


def launch_command(*args) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "launch.py"), *args]


def experiment_config(name: str, arg: str | None = None):
    """`get_config(arg)` of `experiments/<name>.py`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
