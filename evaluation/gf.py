"""The Generalization Factor of SPECS: one number for in- and out-of-distribution gains.

With accuracy gains over the base model G_ID (in-distribution eval sets) and G_OOD
(out-of-distribution), GF = (1 + b^2) * G_ID * G_OOD / (b^2 * G_ID + G_OOD), b = 2: an F-beta
style weighted harmonic mean in which, by the F-beta convention (recall counts b times as much as
precision), the out-of-distribution gain counts b = 2 times as much as the in-distribution one.
Gains are in accuracy points.

A harmonic mean only means something for gains of one sign: GF(1, -5) would be +25, a large
"gain" from a regression. So GF is NaN (printed ``n/a`` in the table) unless both gains are >= 0
and not both 0, i.e. when the gains have opposite signs or the denominator is <= 0.

Several OOD sets: SPECS reports G_OOD as one number; how it combines several OOD benchmarks into it
is not published in the sources checked (the paper's text as summarised online, REFERENCE.md; no
released evaluation code was found). ``ood_accuracy`` therefore takes the mean over the sets,
equal weights unless given: since a gain is linear in the accuracy, G_OOD is then the same
weighted mean of the per-set gains.
"""

from __future__ import annotations

import math


def generalization_factor(g_id: float, g_ood: float, beta: float = 2.0) -> float:
    """GF of the gains over the base model; NaN for gains of opposite signs or a denominator <= 0."""
    b2 = beta * beta
    den = b2 * g_id + g_ood
    if g_id * g_ood < 0 or den <= 0:
        return math.nan
    return (1 + b2) * g_id * g_ood / den


def ood_accuracy(accs: list[float], weights: list[float] | None = None) -> float:
    """The OOD accuracy of several sets: their mean, weighted by ``weights`` (default equal)."""
    if not accs:
        raise ValueError("no OOD accuracies to combine")
    weights = [1.0] * len(accs) if weights is None else list(weights)
    if len(weights) != len(accs) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per OOD set ({len(accs)}), not all 0; got {weights}")
    return sum(w * a for w, a in zip(weights, accs)) / sum(weights)


def gf_rows(base: tuple[float, float], models, beta: float = 2.0) -> list[dict]:
    """Per model: accuracies (ID, OOD), gains over ``base`` and GF. Accuracies in points (0-100);
    ``models``: {name: (acc_id, acc_ood)} or a list of (name, (acc_id, acc_ood)). The base row's
    GF is None (it is the reference)."""
    rows = [{"model": "base", "acc_id": base[0], "acc_ood": base[1], "g_id": 0.0, "g_ood": 0.0, "gf": None}]
    for name, (a_id, a_ood) in models.items() if isinstance(models, dict) else models:
        g_id, g_ood = a_id - base[0], a_ood - base[1]
        rows.append(
            {
                "model": name,
                "acc_id": a_id,
                "acc_ood": a_ood,
                "g_id": g_id,
                "g_ood": g_ood,
                "gf": generalization_factor(g_id, g_ood, beta),
            }
        )
    return rows


def format_table(rows: list[dict], beta: float = 2.0) -> str:
    """Aligned text table; GF is ``-`` for the base row and ``n/a`` where undefined."""
    head = ["model", "acc ID", "acc OOD", "G_ID", "G_OOD", f"GF (b={beta:g})"]
    body = [
        [
            r["model"],
            f"{r['acc_id']:.2f}",
            f"{r['acc_ood']:.2f}",
            f"{r['g_id']:+.2f}",
            f"{r['g_ood']:+.2f}",
            "-" if r["gf"] is None else "n/a" if math.isnan(r["gf"]) else f"{r['gf']:.2f}",
        ]
        for r in rows
    ]
    table = [head, *body]
    w = [max(len(r[i]) for r in table) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in table
    )
