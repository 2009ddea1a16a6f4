"""Standard benchmarks read from their released files and scored with their own protocols.

One module per benchmark (a ``Benchmark`` subclass: ``load``, ``prompt``, ``extract``, ``score``
and per-sample categories; see ``base``), this registry, and ``run`` (``mmpost eval MODEL
--benchmark NAME --data PATH``). docs/evaluation.md lists the file layout each one expects.
"""

from __future__ import annotations

from mm.plugins import registered

# name -> "module:class" (imported when asked for, so listing the names costs nothing) or the class
BENCHMARKS = {
    "mathvista": "evaluation.benchmarks.mathvista:MathVista",
    "mathverse": "evaluation.benchmarks.mathverse:MathVerse",
    "mathvision": "evaluation.benchmarks.mathvision:MathVision",
    "mmmu": "evaluation.benchmarks.mmmu:MMMU",
    "chartqa": "evaluation.benchmarks.chartqa:ChartQA",
    "scienceqa": "evaluation.benchmarks.scienceqa:ScienceQA",
    "cls_rl": "evaluation.benchmarks.cls_rl:ClsRL",
}


def get_benchmark(name: str):
    """A benchmark by its registered name."""
    return registered(BENCHMARKS, name, "benchmark")()
