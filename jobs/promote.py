"""Move a registry alias (default ``champion``) to a version, behind an evaluation gate.

    python jobs/promote.py --name backdrop --version 4            # refused if worse than champion
    python jobs/promote.py --name backdrop --version 4 --force    # explicit override
    python jobs/promote.py --name backdrop --version 1 --allow-first   # no champion yet
    python jobs/promote.py --name backdrop --version 4 --metric category_consistency=0.01 \
        --metric pattern_consistency=0.05                            # each metric, its own tolerance

By default both category-consistency judges gate (colour and pattern), each with tolerance
``--tolerance``. The gate compares the ``eval.<metric>`` tags that jobs/evaluate.py records on each version
(finite numbers only). The baseline is the alias's holder or, if that version was deleted, the
last holder recorded in the registered model's ``backdrop.last_<alias>`` tag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bootstrap  # noqa: E402,F401

from backdrop import registry  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="backdrop")
    p.add_argument("--version", required=True)
    p.add_argument("--alias", default=registry.CHAMPION)
    p.add_argument("--metric", action="append", metavar="NAME[=TOLERANCE]",
                   help=f"a metric to gate on (repeatable; default: {', '.join(registry.GATE_METRICS)})")
    p.add_argument("--tolerance", type=float, default=0.0, help="for the metrics given without their own")
    p.add_argument("--force", action="store_true")
    p.add_argument("--allow-first", action="store_true",
                   help="promote although the alias has no current or recorded holder to compare with")
    a = p.parse_args(argv)
    tolerances = {}
    for item in a.metric or registry.GATE_METRICS:
        metric, _, tol = item.partition("=")
        try:
            tolerances[metric] = float(tol) if tol else a.tolerance
        except ValueError:
            p.error(f"--metric {item!r}: the tolerance after '=' must be a number")
    try:
        report = registry.promote(a.name, a.version, alias=a.alias, metric=list(tolerances), force=a.force,
                                  tolerance=tolerances, allow_no_baseline=a.allow_first)
    except registry.RegistryError as e:
        print(f"promotion refused: {e}", file=sys.stderr)
        return 3
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
