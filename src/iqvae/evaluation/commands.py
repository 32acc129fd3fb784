"""``iqvae evaluate``: every metric of a pipeline on a split (FD/KD with their floor, SWD, LPIPS diversity, NLL,
reconstruction, controllability, the Shapes world's exact metrics)."""

from __future__ import annotations

import argparse

from ..errors import IQVAEError


def build_lpips_from_args(args: argparse.Namespace):
    """(LPIPS model or None, reason when None)."""
    if args.lpips_backbone is None and args.lpips_lin is None:
        return None, "no LPIPS weights given (--lpips-backbone and --lpips-lin)"
    if args.lpips_backbone is None or args.lpips_lin is None:
        missing = "--lpips-backbone" if args.lpips_backbone is None else "--lpips-lin"
        raise IQVAEError(f"LPIPS needs both weight files; {missing} is missing")
    from ..models.lpips import build_lpips

    return build_lpips(args.lpips_backbone, args.lpips_lin, args.lpips_net), ""


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..metrics.extractor import resolve_extractor
    from ..pipeline import IQVAEPipeline
    from ..sampler_flags import sampler_settings
    from ..sampling import check_guidance
    from ..train.predictor import PredictorRecipe, resolve_predictor
    from .evaluate import evaluate_model
    from .results import metric_rows, write_results

    sampler = sampler_settings(args)
    if args.extractor_steps < 1:
        raise IQVAEError(f"--extractor-steps must be at least 1; got {args.extractor_steps}")
    if args.predictor_steps < 1:
        raise IQVAEError(f"--predictor-steps must be at least 1; got {args.predictor_steps}")
    if args.predictor and not Path(args.predictor).is_dir():
        raise IQVAEError(f"--predictor '{args.predictor}' is not a folder (expected a condition predictor written by "
                         "`iqvae train-extractor`)")
    if not Path(args.model).is_dir():
        raise IQVAEError(f"--model '{args.model}' is not a folder (expected a pipeline folder with tokenizer/ and "
                         "transformer/)")
    if args.codes and not (Path(args.codes) / "codes.json").is_file():
        raise IQVAEError(f"--codes '{args.codes}' holds no token codes (codes.json is missing)")
    pipe = IQVAEPipeline.from_pretrained(args.model)  # fails early with a clear message
    check_guidance(pipe.transformer, args.cfg_scale)  # before any extractor is trained
    data = pipe.tokenizer.data_config
    del pipe
    lpips, lpips_reason = build_lpips_from_args(args)
    extractor, source = resolve_extractor(data=data, extractor=args.extractor, inception_weights=args.inception_weights,
                                          cache=args.cache, steps=args.extractor_steps, log=tqdm.write)
    predictor, psource = resolve_predictor(data, predictor=args.predictor, cache=args.cache,
                                           recipe=PredictorRecipe(steps=args.predictor_steps),
                                           need_features=extractor is None, progress=not args.no_progress,
                                           log=tqdm.write)
    if extractor is None and predictor is not None:  # any dataset: FD in the predictor's feature space
        extractor, source = predictor, f"the encoder of the {psource}"
    res = evaluate_model(args.model, split=args.split, conditions=args.conditions, samples=args.samples,
                         seed=args.seed, **sampler,
                         extractor=extractor, extractor_source=source, lpips=lpips,
                         lpips_reason=lpips_reason, codes=args.codes, real_images=args.real_images,
                         recon_items=args.recon_items, progress=not args.no_progress, predictor=predictor,
                         predictor_source=psource)
    out = args.out or str(Path(args.model) / f"eval-{args.split}")
    js, md = write_results(res, out)
    for k, v in metric_rows(res):
        print(f"  {k:45s} {v}")
    print(f"wrote {js} and {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..sampler_flags import add_sampler_flags

    p = sub.add_parser("evaluate", help="FD/KD, SWD, LPIPS diversity, NLL, reconstruction, controllability and "
                                        "Shapes metrics of a pipeline; writes metrics.json and metrics.md")
    p.add_argument("--model", required=True, help="pipeline folder (tokenizer/ + transformer/)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default test)")
    p.add_argument("--conditions", type=int, default=16, help="first N items of the split are the conditions")
    p.add_argument("--samples", type=int, default=8, help="samples per condition")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (also KD subsets, SWD)")
    add_sampler_flags(p)
    p.add_argument("--extractor", default=None,
                   help="feature network folder (`iqvae train-extractor`) for FD/KD (default: on the Shapes world its "
                        "cached classifier, elsewhere the condition predictor's encoder)")
    p.add_argument("--inception-weights", default=None,
                   help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth): the metric is then FID")
    p.add_argument("--extractor-steps", type=int, default=2000,
                   help="Shapes world without an extractor: training steps of the cached classifier (default 2000)")
    p.add_argument("--predictor", default=None,
                   help="condition predictor folder (`iqvae train-extractor --model ...`) that judges "
                        "controllability (default: one trained on the model's train split and cached)")
    p.add_argument("--predictor-steps", type=int, default=1000,
                   help="training steps of the cached condition predictor (default 1000)")
    p.add_argument("--cache", default=None, help="cache folder (default $IQVAE_CACHE or ~/.cache/iqvae)")
    p.add_argument("--lpips-backbone", default=None, help="LPIPS backbone weights (vgg16-397923af.pth / alexnet-owt-...)")
    p.add_argument("--lpips-lin", default=None, help="LPIPS calibration weights (lpips' weights/v0.1/vgg.pth / alex.pth)")
    p.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"], help="LPIPS backbone (default vgg)")
    p.add_argument("--codes", default=None, help="token codes folder for the NLL (default: <model>/codes if present)")
    p.add_argument("--real-images", type=int, default=None,
                   help="reference reals for FD/KD/SWD: the first max(conditions, N) items (default: the conditions')")
    p.add_argument("--recon-items", type=int, default=256, help="items for the reconstruction metrics and rFD")
    p.add_argument("--out", default=None, help="output folder (default <model>/eval-<split>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)
