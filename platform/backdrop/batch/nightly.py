"""Nightly category-wide regeneration: generate again only what changed since the last run.

Compares three things: the catalog, the output's manifest and the model each category should
use now, which is the champion alias unless the category is pinned (``mug=models:/backdrop/3``).
A row is generated again when it is new, failed last time, was made by another model version
(the alias moved, a pin changed), with other parameters, or from inputs that changed since
(``input_changed``: its input fingerprint, :mod:`.fingerprint`); everything else is left alone.
The printed plan also says how many outputs are stale (latest attempt failed, older image kept).

Each distinct model then runs one ordinary backfill (:mod:`.run`) over its categories, with the
model resolved and the rows planned once, here.
A backfill applies the same rule row by row, so a nightly run is idempotent and resumable
exactly like a backfill, and ``--dry-run`` shows the plan it would follow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping

from ..categories import normalize
from .config import BackfillConfig
from .manifest import Target
from .plan import Plan, plan_rows
from .plan import write_rejected
from .run import BackfillResult, Resolved, output_lease, resolve_target, run_backfill

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelGroup:
    """Categories that one model version serves tonight."""

    reference: str  # as configured: the champion alias or a pin
    resolved: Resolved  # the version the backfill will load, resolved once tonight
    categories: tuple[str, ...]

    @property
    def target(self) -> Target:
        return self.resolved.target


@dataclass
class NightlyPlan:
    config: BackfillConfig
    groups: list[ModelGroup]
    plan: Plan

    def format(self) -> str:
        lines = [f"nightly plan: {self.config.catalog} -> {self.config.output}"]
        for g in self.groups:
            t = g.target
            todo = self.plan.todo_in(g.categories)
            lines.append(f"  {g.reference} -> {t.model_name} v{t.model_version} (params {t.params_hash}): "
                         f"{', '.join(g.categories) or '(no categories)'}  [{todo} rows to generate]")
        lines.append(self.plan.format())
        return "\n".join(lines)


def parse_pins(pins: list[str]) -> dict[str, str]:
    """``["mug=models:/backdrop/3"]`` -> ``{"mug": "models:/backdrop/3"}``."""
    out = {}
    for pin in pins:
        category, sep, ref = pin.partition("=")
        if not sep or not category.strip() or not ref.strip():
            raise ValueError(f"--pin {pin!r}: expected CATEGORY=MODEL_REF, e.g. mug=models:/backdrop/3")
        out[normalize(category)] = ref.strip()
    return out


def plan_nightly(config: BackfillConfig, pins: Mapping[str, str] | None = None) -> NightlyPlan:
    """Resolve the champion and the pins, then classify every catalog row against its category's model."""
    if config.limit is not None:
        raise ValueError("nightly regeneration covers whole categories: --limit does not apply")
    pins = {normalize(c): ref for c, ref in (pins or {}).items()}
    champion = resolve_target(config)
    pinned = {c: resolve_target(replace(config, model=ref)) for c, ref in pins.items()}

    def target_of(category: str) -> Target:
        return pinned.get(normalize(category), champion).target

    plan = plan_rows(config.catalog, config.output, config.selection(), target_of, config.placement_names)
    on_champion = tuple(c for c in plan.categories if normalize(c) not in pinned)
    groups = [ModelGroup(config.model, champion, on_champion)]
    by_model: dict[str, list[str]] = {}
    for category, resolved in pinned.items():
        by_model.setdefault(resolved.pinned, []).append(category)
    for categories in by_model.values():
        in_catalog = tuple(c for c in plan.categories if normalize(c) in categories)
        groups.append(ModelGroup(",".join(f"{c}={pins[c]}" for c in categories), pinned[categories[0]], in_catalog))
    return NightlyPlan(config, groups, plan)


def run_nightly(config: BackfillConfig, pins: Mapping[str, str] | None = None,
                dry_run: bool = False) -> tuple[NightlyPlan, list[BackfillResult]]:
    """Plan, print the plan, and (unless ``dry_run``) run one backfill per model with work to do.

    A real run holds the output's lease from before it plans until its last backfill is done;
    a dry run takes none (it writes nothing, and may plan while a run is live).
    """
    if dry_run:
        nightly = plan_nightly(config, pins)
        print(nightly.format(), flush=True)
        return nightly, []
    results = []
    with output_lease(replace(config, kind="nightly")) as lease:
        nightly = plan_nightly(config, pins)
        print(nightly.format(), flush=True)
        write_rejected(config.output, nightly.plan, None, lease.staging)
        for group in nightly.groups:
            group_plan = nightly.plan.restrict(group.categories)
            if not group_plan.todo and not group_plan.refused:
                log.info("%s: nothing to regenerate", group.reference)
                continue
            group_config = replace(config, model=group.resolved.pinned, categories=group.categories, kind="nightly")
            results.append(run_backfill(group_config, resolved=group.resolved, plan=group_plan, lease=lease))
    return nightly, results


def exit_code(results: list[BackfillResult]) -> int:
    return max((r.exit_code() for r in results), default=0)
