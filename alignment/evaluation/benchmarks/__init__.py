"""Standard benchmarks read from their released files and scored with their own protocols.

One module per benchmark (a ``Benchmark`` subclass: ``load``, ``prompt``, ``extract``, ``score``
and per-sample categories; see ``base``), this registry, and ``run`` (``mmpost eval MODEL
--benchmark NAME --data PATH``). docs/evaluation.md lists the file layout each one expects.
"""

from __future__ import annotations

import importlib

# name -> "module:class" (imported when asked for, so listing the names costs nothing)
BENCHMARKS = {
    "mathvista": "mathvista:MathVista",
    "mathverse": "mathverse:MathVerse",
    "mathvision": "mathvision:MathVision",
    "mmmu": "mmmu:MMMU",
    "chartqa": "chartqa:ChartQA",
    "scienceqa": "scienceqa:ScienceQA",
    "cls_rl": "cls_rl:ClsRL",
}


def get_benchmark(name: str):
    """A benchmark by its registered name."""
    from mm.config import ConfigError

    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
