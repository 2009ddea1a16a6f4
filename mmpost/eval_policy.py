"""``mmpost eval-policy MODEL --env metaworld:TASK``: closed-loop success rate of a VLA in MetaWorld.

MODEL is an exported VLA folder (OUTPUT/final of a ``vla`` run) or ``expert`` (the scripted
policy, through the same loop). Flags come from ``vla.closed_loop.ClosedLoopConfig``.
Needs ``pip install 'mmpost[sim]'`` and an offscreen OpenGL (``MUJOCO_GL``, see docs/spatial_forcing.md).
"""

from __future__ import annotations


def add_eval_policy(p, words=()) -> None:
    from mmpost.flags import add_config_flags
    from vla.closed_loop import ClosedLoopConfig

    p.add_argument("model", help="exported VLA folder (OUTPUT/final) or 'expert' (the scripted policy)")
    add_config_flags(p, ClosedLoopConfig, title="closed-loop evaluation (ClosedLoopConfig)")
    p.set_defaults(func=cmd_eval_policy)


def cmd_eval_policy(args) -> int:
    from mm.config import ConfigError
    from mmpost.flags import config_from_args
    from vla.closed_loop import ClosedLoopConfig, evaluate_policy
    from vla.metaworld import RenderError

    cfg = config_from_args(ClosedLoopConfig, args)
    try:
        r = evaluate_policy(args.model, cfg)
    except (ValueError, RenderError) as e:  # a bad --env / camera, or no offscreen OpenGL
        raise ConfigError(str(e)) from e
    lo, hi = r["ci95"]
    steps = r["mean_steps_to_success"]
    print(
        f"{r['task']}: success {r['successes']}/{r['episodes']} = {r['success_rate']:.2f} "
        f"(95% CI {lo:.2f}-{hi:.2f}), mean steps to success {'-' if steps is None else f'{steps:.1f}'}"
    )
    print(f"  results: {r['results']}" + (f"\n  videos:  {', '.join(r['videos'])}" if r["videos"] else ""))
    return 0
