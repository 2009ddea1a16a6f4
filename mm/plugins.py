"""Plug-ins from the user's own files: ``path/to/file.py:function`` references in a config.

A training config may name a reward or a tool that lives in the user's own Python file::

    rewards: [{name: my_rewards.py:score, weight: 0.5}]
    rollout: {tools: [crop_image, my_tools.py:depth_probe]}

:func:`load_function` imports the file (once per path) and returns the function. A relative path
is looked up next to the config file first (``mm.config.config_dir``, set while a config loads), then
in the working directory. Every failure is a :class:`~mm.config.ConfigError` naming the config key
and the fix; the callers (the reward and tool resolvers) check the signature they need.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable

from mm.config import ConfigError, current_config_dir

_MODULES: dict[tuple[str, int], object] = {}


def is_ref(name: str) -> bool:
    """Whether ``name`` is a ``file.py:function`` reference (else a built-in's name)."""
    return ":" in name and name.split(":", 1)[0].endswith(".py")


def locate(ref: str, key: str) -> str:
    """``ref`` with its file made absolute (so it resolves from any working directory later)."""
    if not is_ref(ref):
        raise ConfigError(f"{key}: {ref!r} is not a reference; write it as path/to/file.py:function_name")
    file, name = ref.rsplit(":", 1)
    if os.path.isabs(file):
        places = [file]
    else:
        places = [os.path.join(d, file) for d in (current_config_dir(), os.getcwd()) if d]
    for p in places:
        if os.path.isfile(p):
            return f"{os.path.abspath(p)}:{name}"
    raise ConfigError(
        f"{key}: {ref!r}: file {file!r} not found (looked in {', '.join(dict.fromkeys(places))}); "
        "give a path relative to the config file or the working directory, or an absolute one"
    )


def load_function(ref: str, key: str) -> Callable:
    """The function named by ``ref`` (``file.py:function``); ``key`` is the config key, for errors."""
    path, name = locate(ref, key).rsplit(":", 1)
    version = (path, os.stat(path).st_mtime_ns)  # an edited file is imported again
    module = _MODULES.get(version)
    if module is None:
        mod_name = f"mmpost_plugin_{abs(hash(version)):x}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise ConfigError(f"{key}: importing {path} failed: {type(e).__name__}: {e}") from e
        _MODULES[version] = module
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        found = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise ConfigError(
            f"{key}: {path} has no function {name!r} (its functions: {', '.join(found) or 'none'})"
        )
    return fn


def registered(registry: dict, name: str, what: str):
    """The object registered as ``name`` in one of mmpost's registries (a dict from a name to
    ``"package.module:object"``, imported here when first asked for, or to the object itself);
    an unknown name is a config error naming ``what`` and the registered names."""
    if name not in registry:
        raise ConfigError(f"{what}={name!r}: use one of {', '.join(registry)}")
    entry = registry[name]
    if isinstance(entry, str):
        entry = registry[name] = import_ref(entry)
    return entry


def import_ref(ref: str):
    """``"package.module:name"`` -> the object (imports the module)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)
