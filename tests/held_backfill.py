"""``jobs/catalog_backfill.py`` with a hold the test controls: the generator actor lets the
first ``--pass-batches`` batches through, then waits while ``--hold-file`` exists. A test
that kills the job "mid-run" then knows exactly how far it got, however fast the machine is.

    python tests/held_backfill.py --pass-batches 2 --hold-file F <catalog_backfill arguments>
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
sys.path.insert(0, str(REPO))

from jobs import catalog_backfill  # noqa: E402  (imports backdrop as the job does)

from backdrop.batch import args as batch_args  # noqa: E402
from backdrop.batch.run import run_backfill  # noqa: E402
from backdrop.batch.stages import GeneratorActor  # noqa: E402


class HeldGenerator(GeneratorActor):
    """Defined in ``__main__``: Ray ships it to the actor by value."""

    def __init__(self, *args, pass_batches: int, hold_file: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.pass_batches, self.hold_file, self.calls = pass_batches, hold_file, 0

    def __call__(self, batch_table):
        self.calls += 1
        while self.calls > self.pass_batches and os.path.exists(self.hold_file):
            time.sleep(0.05)
        return super().__call__(batch_table)


def main(argv: list[str]) -> int:
    parser = catalog_backfill.build_parser()
    parser.add_argument("--pass-batches", type=int, required=True)
    parser.add_argument("--hold-file", required=True)
    args = parser.parse_args(argv)
    config = batch_args.start_job(args)
    assert config.concurrency == 1, "one actor: the batches it lets through are counted in one place"

    class Generator(HeldGenerator):
        def __init__(self, *a, **kw):
            super().__init__(*a, pass_batches=args.pass_batches, hold_file=args.hold_file, **kw)

    return batch_args.run_job(lambda: run_backfill(config, generator_cls=Generator).exit_code())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
