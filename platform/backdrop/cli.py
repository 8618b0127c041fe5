"""``backdrop``: the command line over the library.

    backdrop synth    --output runs/catalog                 make the synthetic catalog
                      [--style-seed S]                      ... with style families drawn from S
    backdrop synth    --prior --rows N --output runs/prior  the broad prior the base is trained on
    backdrop synth    --photos DIR --output runs/mine       a catalog from your photographs (a sub-folder each)
    backdrop train    --catalog runs/catalog/train.parquet --output runs/model
                      [--device auto|cpu|cuda --mixed-precision no|bf16|fp16 --gradient-checkpointing]
    backdrop generate --model runs/model --catalog runs/catalog/heldout.parquet --output runs/out   in-process
    backdrop qa-fit   --model runs/model --catalog runs/catalog/train.parquet   the QA scorer best-of-N needs
    backdrop demo                                            all of the above, small and fast
    backdrop call --image p.png --category mug --reference ad.png   through the HTTP service
    backdrop backfill --model models:/backdrop@champion --catalog ... --output ...   on Ray Data
    backdrop brand add acme --references ad1.png ad2.png [--masks m1.png m2.png]   a brand style kit
    backdrop brand list | show acme | remove acme [--version 2]

Every path may be a local path or an ``s3://`` URI (endpoint from BACKDROP_S3_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "tiny-64")


def cmd_synth(args) -> int:
    from .demo.synthetic import SyntheticConfig, make_catalog, make_prior_catalog

    t = time.perf_counter()
    if args.photos:
        from .demo.photos import PhotoCatalogConfig, make_photo_catalog
        from .errors import InvalidParameterError

        if args.prior or args.style_seed is not None or args.harmony != "off":
            raise InvalidParameterError("--photos makes its own catalog: drop --prior / --style-seed / --harmony")
        paths = make_photo_catalog(args.photos, args.output, PhotoCatalogConfig(
            train_per_category=args.train_per_category, heldout_per_category=args.heldout_per_category,
            resolution=args.resolution, seed=args.seed, split=args.photo_split))
    elif args.prior:
        paths = make_prior_catalog(args.output, args.rows, resolution=args.resolution, seed=args.seed)
    else:
        cfg = SyntheticConfig(num_categories=args.categories, train_per_category=args.train_per_category,
                              heldout_per_category=args.heldout_per_category, resolution=args.resolution,
                              seed=args.seed, style_seed=args.style_seed, harmony=args.harmony)
        paths = make_catalog(args.output, cfg)
    print(f"synthetic catalog in {time.perf_counter() - t:.1f}s:")
    for split, uri in paths.items():
        print(f"  {split:8s} {uri}")
    return 0


def cmd_train(args) -> int:
    from .training import train_generator
    from .training import recipe as recipes
    from .training.loop import training_device

    try:  # refused before any data is read, in words
        recipe = recipes.resolve(args)
        stage_options = recipe.stage_options()
        device = training_device(recipe.device, recipe.mixed_precision)
    except ValueError as e:
        raise SystemExit(f"backdrop train: {e}")
    r = recipe
    print(f"training on {device} (mixed precision: {r.mixed_precision}"
          f"{', gradient checkpointing' if r.gradient_checkpointing else ''})")
    import mlflow

    from .training.tracking import record_generator, training_run

    stages = tuple(r.stages)
    config = dict(catalog=r.catalog, output=r.output, stages=",".join(stages), minutes=r.minutes or None,
                  steps=r.steps or None, init=r.init, family=r.family, batch_size=r.batch_size,
                  resolution=r.resolution, seed=r.seed, device=str(device), mixed_precision=r.mixed_precision,
                  gradient_checkpointing=r.gradient_checkpointing, stage_options=stage_options,
                  recipe=args.config)
    with training_run(r.run_name, config) as on_log:  # loss curves, config, model + lineage in MLflow
        mlflow.log_text(recipes.to_yaml(recipe), "recipe.yaml")  # the resolved recipe: rerun it as it is
        model, results = train_generator(
            r.catalog, r.output, stages=stages, minutes=r.minutes or None, steps=r.steps or None, init=r.init,
            batch_size=r.batch_size, resolution=r.resolution, seed=r.seed, device=device,
            mixed_precision=r.mixed_precision, gradient_checkpointing=r.gradient_checkpointing,
            stage_options=stage_options, on_log=on_log, family=r.family,
        )
        mlflow.log_metrics({f"{x.stage}/steps_per_s": x.steps / max(x.seconds, 1e-9) for x in results})
        version = record_generator(model, r.catalog, stages, r.run_name, register=r.register, init=r.init)
        run_id = mlflow.active_run().info.run_id
    for x in results:
        print(f"  {x.stage:5s} {x.steps:6d} steps {x.seconds / 60:5.1f} min  lr {x.learning_rate:g}  "
              f"final loss {x.final_loss:.4f}")
    print(f"saved generator to {r.output}; MLflow run {run_id}"
          + (f"; registered {r.register} v{version.version}" if version else ""))
    return 0


def cmd_generate(args) -> int:
    """The backfill's in-process executor: same plan, stages, manifest and resume, no Ray."""
    from .batch.args import run_job, start_job
    from .batch.run import run_backfill

    # executor local (the default here) starts no Ray
    return run_job(lambda: run_backfill(start_job(args, kind="generate")).exit_code())


def cmd_qa_fit(args) -> int:
    """Fit the QA scorer on a train catalog and save it into the generator (``qa/scorer.json``)."""
    from .quality.qa import DEFAULT_THRESHOLD, fit_scorer

    scorer = fit_scorer(args.catalog, args.model, clip_model=args.clip_model, max_rows=args.max_rows,
                        threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold)
    print(f"QA scorer ({scorer.features} features, threshold {scorer.threshold:g}) fitted on "
          f"{scorer.fitted_on['rows']} rows (train accuracy {scorer.fitted_on['train_accuracy']:.3f}); "
          f"saved to {args.model.rstrip('/')}/qa/scorer.json")
    return 0


def cmd_demo(args) -> int:
    from .demo.recipe import run_demo

    run_demo(args.workdir, train_minutes=args.train_minutes, from_scratch=args.from_scratch,
             checkpoint=args.checkpoint, steps=args.steps)
    return 0


def cmd_backfill(args) -> int:
    from .batch.args import run_job, start_job
    from .batch.run import run_backfill

    return run_job(lambda: run_backfill(start_job(args)).exit_code())


def cmd_brand(args) -> int:
    """Brand style kits in the registry (``backdrop.brands``): add, list, show, remove."""
    import json

    from . import brands

    if args.action == "add":
        kit = brands.add_kit(args.name, args.references, args.masks, alias=args.alias)
        print(f"brand style {kit['name']}: version {kit['versions'][0]['version']} "
              f"({kit['versions'][0]['references']} references); aliases {kit['aliases']}")
    elif args.action == "list":
        for kit in brands.list_kits():
            print(f"{kit['name']}: versions {[v['version'] for v in kit['versions']]}, aliases {kit['aliases']}")
    elif args.action == "show":
        print(json.dumps(brands.describe_kit(args.name), indent=2))
    else:
        brands.remove_kit(args.name, args.version)
        print(f"removed brand style {args.name}" + (f" version {args.version}" if args.version else ""))
    return 0


def cmd_call(args) -> int:
    """Call a running backdrop HTTP service (retries 503 after its Retry-After)."""
    from .client import BackdropClient, ServiceError

    client = BackdropClient(args.url, api_key=args.api_key, max_retries=args.retries)
    try:
        if args.models:
            import json

            print(json.dumps(client.models(), indent=2))
            return 0
        if not (args.image and args.category):
            raise SystemExit("backdrop call: --image and --category are required (or --models)")
        answer = client.generate(
            args.image, category=args.category, mask=args.mask, reference=args.reference,
            reference_mask=args.reference_mask, prompt=args.prompt, seed=args.seed, steps=args.steps,
            guidance=args.guidance, num_images=args.num_images, scheduler=args.scheduler,
            placements=args.placements, candidates=args.candidates, image_format=args.image_format,
            quality=args.quality, style=args.style, model_version=args.model_version, model_alias=args.model_alias)
    except ServiceError as e:
        print(f"backdrop call: {e}", file=sys.stderr)
        return 1
    stem, ext = os.path.splitext(args.output)
    for i, (data, seed, placement) in enumerate(zip(answer.images, answer.seeds, answer.placements)):
        path = args.output if len(answer.images) == 1 else f"{stem}-{i}{ext or '.png'}"
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {answer.model} v{answer.version} seed {seed} placement {placement} ({answer.media_type})")
    print(f"batch size {answer.batch_size}, {answer.timing_ms.get('total', '?')} ms, "
          f"{answer.attempts} attempt(s), request id {answer.request_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdrop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    from .batch.args import add_generation_arguments

    s = sub.add_parser("synth", help="write the synthetic catalog (Parquet + PNGs)")
    s.add_argument("--output", required=True, help="directory or s3:// prefix")
    s.add_argument("--categories", type=int, default=8)
    s.add_argument("--train-per-category", type=int, default=160)
    s.add_argument("--heldout-per-category", type=int, default=24)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--style-seed", type=int, help="draw every category's style family from this seed "
                   "(a catalog the shipped model never saw); default: the demo catalog")
    s.add_argument("--prior", action="store_true", help="write the broad procedural prior the base is "
                   "trained on instead (one category, 'prior'; --rows images)")
    s.add_argument("--rows", type=int, default=20_000, help="--prior: number of images")
    s.add_argument("--harmony", default="off", choices=("off", "shadow", "shadow+reflection"),
                   help="draw contact shadows (and, on glossy surfaces, reflections) around each product in "
                        "the ads; off (the default) writes the catalog exactly as before")
    s.add_argument("--photos", metavar="DIR", help="build the catalog from your own photographs instead: one "
                   "category per sub-folder of DIR, backgrounds cropped from its photos (held-out crops from a "
                   "part of each photo that training never sees)")
    s.add_argument("--photo-split", default="band", choices=("band", "checker"),
                   help="--photos: band holds out the far end of each photo's long side (the default); checker "
                        "holds out one diagonal of a 2x2 grid, so held-out crops show the whole photo's palette")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train generator stages on one process (tiny preset: vae,base,cg,pg), "
                                     "from a recipe (--config recipes/*.yaml), flags and key=value overrides")
    from .training.recipe import add_arguments as add_recipe_arguments

    add_recipe_arguments(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate a catalog in this process (the backfill without Ray: "
                                         "same manifest, resume and flags)")
    add_generation_arguments(g, executor="local")
    g.set_defaults(func=cmd_generate)

    q = sub.add_parser("qa-fit", help="fit the QA scorer (best-of-N, review flags) on a train catalog and "
                                       "save it with a generator directory")
    q.add_argument("--model", required=True, help="a saved generator directory (or s3:// prefix) to write into")
    q.add_argument("--catalog", required=True, help="the TRAIN split's catalog Parquet (never the held-out one)")
    q.add_argument("--threshold", type=float, help="qa_score below this is flagged (default 0.5)")
    q.add_argument("--max-rows", type=int, help="fit on at most this many rows (evenly spaced)")
    q.add_argument("--clip-model", help="a local CLIP vision directory for the category features")
    q.set_defaults(func=cmd_qa_fit)

    d = sub.add_parser("demo", help="synthetic catalog -> train (briefly) -> gallery, on local defaults")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="shipped tiny checkpoint to start from")
    d.add_argument("--from-scratch", action="store_true", help="ignore the checkpoint; train every stage")
    d.add_argument("--train-minutes", type=float, default=1.0, help="CG fine-tuning budget on top of the checkpoint")
    d.add_argument("--steps", type=int, default=20, help="DDIM steps for the gallery")
    d.set_defaults(func=cmd_demo)

    # backfill: the Ray Data catalog backfill (same flags and library call as jobs/catalog_backfill.py)
    b = sub.add_parser("backfill", help="catalog backfill on Ray Data: resumable, with a manifest and an MLflow run")
    add_generation_arguments(b)
    b.set_defaults(func=cmd_backfill)
    k = sub.add_parser("brand", help="brand style kits: reference ads stored once in the registry, used by "
                                      "name (a catalog's brand_style column, the HTTP style field)")
    kits = k.add_subparsers(dest="action", required=True)
    add = kits.add_parser("add", help="validate reference ads (and masks) and store them as a new kit version")
    add.add_argument("name", help="the kit's name (a-z, 0-9, -, _)")
    add.add_argument("--references", nargs="+", required=True, metavar="URI", help="reference ads (paths or s3://)")
    add.add_argument("--masks", nargs="+", metavar="URI", help="their product masks, one per reference, in order")
    add.add_argument("--alias", default="current", help="point this alias at the new version (default current)")
    kits.add_parser("list", help="every kit, its versions and aliases")
    show = kits.add_parser("show", help="one kit's versions and aliases")
    show.add_argument("name")
    rm = kits.add_parser("remove", help="delete a kit (or one version of it)")
    rm.add_argument("name")
    rm.add_argument("--version", help="only this version")
    k.set_defaults(func=cmd_brand)
    # call: the HTTP client (backdrop.client) against a running `serve run serve_apps/config.yaml`
    c = sub.add_parser("call", help="generate through a running backdrop HTTP service")
    c.add_argument("--url", default=os.environ.get("BACKDROP_URL", "http://127.0.0.1:8000"))
    c.add_argument("--api-key", help="default: $BACKDROP_API_KEY")
    c.add_argument("--models", action="store_true", help="print the served model, categories and versions")
    c.add_argument("--image", help="product photo (path or s3://); alpha = mask unless --mask")
    c.add_argument("--mask", help="product mask (path or s3://)")
    c.add_argument("--reference", help="reference ad image: the background takes its style")
    c.add_argument("--reference-mask", help="the reference's product mask")
    c.add_argument("--style", help="a brand style kit instead of a reference (acme, acme@ALIAS, acme/VERSION)")
    c.add_argument("--category")
    c.add_argument("--prompt", help="free text describing the background")
    c.add_argument("--seed", type=int)
    c.add_argument("--steps", type=int)
    c.add_argument("--guidance", type=float)
    c.add_argument("--num-images", type=int, default=1)
    c.add_argument("--scheduler", help="ddim, dpm++ or unipc (default: the model's own)")
    c.add_argument("--placements", metavar="LIST", help="ad placements, e.g. 1:1,16:9 or 300x250: one image each")
    c.add_argument("--candidates", type=int, help="best-of-N (needs a model with a QA scorer)")
    c.add_argument("--image-format", choices=["png", "webp", "jpeg"], help="how the images are encoded (default png)")
    c.add_argument("--quality", type=int, help="webp/jpeg quality 1..100")
    c.add_argument("--model-version", help="a registry version instead of the default alias")
    c.add_argument("--model-alias", help="a registry alias instead of the default (e.g. challenger)")
    c.add_argument("--retries", type=int, default=4, help="retries on 503 (each after Retry-After)")
    c.add_argument("--output", default="backdrop.png", help="where to write the image(s)")
    c.set_defaults(func=cmd_call)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import BackdropError
    from .settings import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except BackdropError as e:  # bad input or configuration: say what, no traceback
        print(f"backdrop {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
