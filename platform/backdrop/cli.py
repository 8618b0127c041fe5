"""``backdrop``: the command line over the library.

    backdrop synth    --output runs/catalog                 make the synthetic catalog
    backdrop train    --catalog runs/catalog/train.parquet --output runs/model
    backdrop generate --model runs/model --catalog runs/catalog/heldout.parquet --output runs/out
    backdrop demo                                            all of the above, small and fast

Every path may be a local path or an ``s3://`` URI (endpoint from BACKDROP_S3_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "tiny-64")


def _minutes(text: str) -> dict[str, float]:
    """'vae=5,base=4' -> {'vae': 5.0, 'base': 4.0}"""
    out = {}
    for part in filter(None, text.split(",")):
        stage, _, value = part.partition("=")
        out[stage.strip()] = float(value)
    return out


def cmd_synth(args) -> int:
    from .data.synthetic import SyntheticConfig, make_catalog

    cfg = SyntheticConfig(num_categories=args.categories, train_per_category=args.train_per_category,
                          heldout_per_category=args.heldout_per_category, resolution=args.resolution,
                          seed=args.seed)
    t = time.perf_counter()
    paths = make_catalog(args.output, cfg)
    print(f"synthetic catalog in {time.perf_counter() - t:.1f}s:")
    for split, uri in paths.items():
        print(f"  {split:8s} {uri}")
    return 0


def cmd_train(args) -> int:
    from .training import STAGES, train_generator

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    minutes = _minutes(args.minutes) if args.minutes else None
    steps = {k: int(v) for k, v in _minutes(args.steps).items()} if args.steps else None
    model, results = train_generator(
        args.catalog, args.output, stages=stages, minutes=minutes, steps=steps, init=args.init,
        batch_size=args.batch_size, resolution=args.resolution, seed=args.seed,
    )
    for r in results:
        print(f"  {r.stage:5s} {r.steps:6d} steps {r.seconds / 60:5.1f} min  final loss {r.final_loss:.4f}")
    print(f"saved generator to {args.output}")
    return 0


def cmd_generate(args) -> int:
    from .data.catalog import read_catalog
    from .generation import OutputConfig, RunContext, generate_rows
    from .models.generator import BackdropModel
    from .pipeline import BackdropPipeline, InferenceConfig

    model = BackdropModel.from_pretrained(args.model)
    pipe = BackdropPipeline(model)
    rows = read_catalog(args.catalog).to_pylist()
    if args.category:
        rows = [r for r in rows if r["category"] in set(args.category)]
    rows = rows[: args.limit] if args.limit else rows
    ctx = RunContext(args.output, model_name=args.model, model_version="local",
                     inference=InferenceConfig(args.steps, args.guidance), output=OutputConfig(args.format),
                     seed=args.seed, resolution=model.config.resolution)
    records = []
    t = time.perf_counter()
    for i in range(0, len(rows), args.batch_size):
        records += generate_rows(pipe, rows[i:i + args.batch_size], ctx)
        print(f"  {len(records)}/{len(rows)} rows", file=sys.stderr)
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok} ok, {len(records) - ok} failed of {len(records)} rows in {time.perf_counter() - t:.1f}s "
          f"-> {args.output}")
    _write_manifest(records, args.output)
    return 0 if ok == len(records) else 1


def _write_manifest(records: list[dict], output: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import storage

    storage.makedirs(output)
    fs, path = storage.pyarrow_filesystem(storage.join(output, "manifest.parquet"))
    pq.write_table(pa.Table.from_pylist(records), path, filesystem=fs)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.workdir, train_minutes=args.train_minutes, from_scratch=args.from_scratch,
             checkpoint=args.checkpoint, steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdrop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic catalog (Parquet + PNGs)")
    s.add_argument("--output", required=True, help="directory or s3:// prefix")
    s.add_argument("--categories", type=int, default=8)
    s.add_argument("--train-per-category", type=int, default=160)
    s.add_argument("--heldout-per-category", type=int, default=24)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train generator stages on one process (tiny preset: vae,base,cg,pg)")
    t.add_argument("--catalog", required=True, help="training catalog Parquet (image = ad image, mask = product)")
    t.add_argument("--output", required=True, help="where to save the generator (dir or s3://)")
    t.add_argument("--init", help="continue from this saved generator instead of a fresh tiny preset")
    t.add_argument("--stages", default="vae,base,cg,pg", help="comma-separated, in order")
    t.add_argument("--minutes", help="time budget per stage, e.g. vae=5,base=4,cg=12,pg=4")
    t.add_argument("--steps", help="step budget per stage, e.g. cg=500 (whichever budget ends first)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--resolution", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate backgrounds for a catalog in this process")
    g.add_argument("--model", required=True, help="saved generator (dir or s3://)")
    g.add_argument("--catalog", required=True, help="catalog Parquet")
    g.add_argument("--output", required=True, help="output dir or s3:// prefix")
    g.add_argument("--category", action="append", help="only these categories (repeatable)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    g.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (default 2.0)")
    g.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--limit", type=int)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="synthetic catalog -> train (briefly) -> gallery, on local defaults")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="shipped tiny checkpoint to start from")
    d.add_argument("--from-scratch", action="store_true", help="ignore the checkpoint; train every stage")
    d.add_argument("--train-minutes", type=float, default=1.0, help="CG fine-tuning budget on top of the checkpoint")
    d.add_argument("--steps", type=int, default=20, help="DDIM steps for the gallery")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
