"""Functions from the user's own files, named ``path/to/file.py:function`` in a config.

``load_function`` imports the file once (a relative path is taken from the working directory),
and checks that it defines the function with the parameters its caller will pass, so a typo
fails when the config loads, not after the first rollout.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable
from functools import cache
from types import ModuleType


def is_plugin(name: str) -> bool:
    return ".py:" in name


@cache
def _module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mmpost_plugin_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_function(spec: str, signature: str, positional: int = 1) -> Callable:
    """The function ``spec`` (``file.py:name``), which must take ``positional`` positional
    parameters and ``**kwargs`` (``signature`` is how the error spells what is expected)."""
    path, _, name = spec.rpartition(":")
    expected = f"define `def {name}{signature}` in {path}"
    if not os.path.isfile(path):
        raise ValueError(
            f"{spec}: file {os.path.abspath(path)} not found (relative paths start at the working directory)"
        )
    fn = getattr(_module(os.path.abspath(path)), name, None)
    if not callable(fn):
        raise ValueError(f"{spec}: {path} has no function {name!r}; {expected}")
    params = list(inspect.signature(fn).parameters.values())
    kinds = [p.kind for p in params]
    n_pos = sum(k in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p, k in zip(params, kinds))
    if n_pos < positional or inspect.Parameter.VAR_KEYWORD not in kinds:
        raise ValueError(f"{spec}: takes {inspect.signature(fn)}, expected {signature}; {expected}")
    return fn
