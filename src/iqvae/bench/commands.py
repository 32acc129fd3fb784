"""``iqvae bench sampling | train | sgw | ablation | modalities``: measurements printed side by side in one run."""

from __future__ import annotations

import argparse


def _gpt_args(p: argparse.ArgumentParser, layers: int, width: int, heads: int) -> None:
    p.add_argument("--n-layer", type=int, default=layers, help=f"transformer blocks (default {layers}; paper 24)")
    p.add_argument("--n-embd", type=int, default=width, help=f"width (default {width}; paper 1024)")
    p.add_argument("--n-head", type=int, default=heads, help=f"attention heads (default {heads})")
    p.add_argument("--vocab", type=int, default=1024, help="image and condition vocabulary (paper 1024)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def run_sampling(args: argparse.Namespace) -> int:
    from ..models.gpt import GPTConfig
    from .speed import bench_sampling, format_rows

    half = args.seq // 2
    cfg = GPTConfig(cond_vocab=args.vocab, image_vocab=args.vocab, n_cond=half, n_image=args.seq - half,
                    n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    batches = tuple(int(b) for b in args.batch.split(","))
    print(f"GPT {args.n_layer}x{args.n_embd}, sequence {args.seq} ({half} condition + {args.seq - half} image tokens),"
          f" device {_device(args.device)}")
    rows = bench_sampling(cfg, batch_sizes=batches, device=_device(args.device), repeats=args.repeats,
                          guidance_scale=args.cfg_scale, reference=not args.no_reference)
    print(format_rows(rows))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..models.gpt import GPTConfig
    from .speed import bench_train, format_rows

    half = args.seq // 2
    cfg = GPTConfig(cond_vocab=args.vocab, image_vocab=args.vocab, n_cond=half, n_image=args.seq - half,
                    n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    print(f"GPT {args.n_layer}x{args.n_embd}, sequence {args.seq}, batch {args.batch}, Gumbel every {args.every}")
    rows = bench_train(cfg, steps=args.steps, batch=args.batch, device=_device(args.device), every=args.every)
    print(format_rows(rows))
    return 0


def run_sgw(args: argparse.Namespace) -> int:
    from .regularizer import bench_regularizer_share

    print(bench_regularizer_share(preset=args.preset, cond=args.cond, steps=args.steps, batch=args.batch))
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    from .ablation import run_ablation_bench

    return run_ablation_bench(args)


def register(sub: argparse._SubParsersAction) -> None:
    from ..modalities import MODALITIES
    from .modalities import register as register_modalities

    p = sub.add_parser("bench", help="benchmarks: sampling speed, Gumbel training cost, regularizer cost, ablation, "
                                     "quality bar per modality")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)

    s = bsub.add_parser("sampling", help="tokens/s: KV-cache sampler vs full-recompute reference, and matmul-bound share")
    _gpt_args(s, 8, 512, 8)
    s.add_argument("--seq", type=int, default=512, help="sequence length, condition + image tokens (paper 512)")
    s.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    s.add_argument("--repeats", type=int, default=1, help="timed repeats per measurement (median)")
    s.add_argument("--no-reference", action="store_true",
                   help="skip the O(n^2)-per-token cache-free reference sampler (its columns print nan)")
    s.add_argument("--cfg-scale", type=float, default=1.5,
                   help="also time classifier-free guided sampling at this scale, side by side with unguided "
                        "sampling (default 1.5; 1: skip)")
    s.set_defaults(func=run_sampling)

    t = bsub.add_parser("train", help="training throughput with and without Gumbel sampling, side by side")
    _gpt_args(t, 8, 512, 8)
    t.add_argument("--seq", type=int, default=512, help="sequence length (paper 512)")
    t.add_argument("--batch", type=int, default=8, help="batch size")
    t.add_argument("--steps", type=int, default=16, help="timed steps per mode (a multiple of --every)")
    t.add_argument("--every", type=int, default=4, help="Gumbel sampling every N iterations (paper 4)")
    t.set_defaults(func=run_train)

    r = bsub.add_parser("sgw", help="the sliced-GW regularizer's share of a tokenizer training step")
    r.add_argument("--preset", default="small", help="tokenizer preset")
    r.add_argument("--cond", default="seg", help="condition modality: " + ", ".join(MODALITIES))
    r.add_argument("--steps", type=int, default=10, help="timed steps")
    r.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    r.set_defaults(func=run_sgw)

    a = bsub.add_parser("ablation", help="the paper's Table 3 (plus sVQ and RQ) at equal compute, several seeds")
    a.add_argument("--world", default="shapes", help="dataset (only the built-in shapes world for now)")
    a.add_argument("--cond", default="seg", help="condition modality: " + ", ".join(MODALITIES))
    a.add_argument("--budget", choices=["small", "full"], default="small",
                   help="small: 32 px, 16 x 16 tokens, about 96 minutes on 2 CPU cores (the preset's comment); "
                        "full: larger models and longer training, for a GPU")
    a.add_argument("--seeds", type=int, default=3, help="seeds per system (mean ± std)")
    a.add_argument("--systems", default=None, help="comma-separated subset of systems (default: all)")
    a.add_argument("--sweep-sgw", default=None, metavar="L1,L2,...",
                   help="also train iq-vr at seed 0 with each λ1 (loss.sgw_weight), e.g. 0.1,0.3,1,3,10, and report "
                        "the sweep (latent probes, NLL, samples) in ablation.md; the point equal to the preset's "
                        "setting reuses the iq-vr run (at the small budget about 3.5 min per point on 2 cores)")
    a.add_argument("--sweep-sgw-on", default=None, metavar="pre,post",
                   help="model.sgw_on values of the sweep, crossed with --sweep-sgw (default: pre,post)")
    a.add_argument("--out", default="results", help="folder for ablation.md / ablation.png / ablation.json")
    a.add_argument("--work", default="runs/ablation", help="folder for the runs")
    a.add_argument("--set", dest="set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset option, e.g. tokenizer.train.steps=500, transformer.model.n_layer=4, "
                        "ablation.conditions=32 (repeatable)")
    a.add_argument("--extractor", default=None, help="feature classifier checkpoint for FD (default: train and cache one)")
    a.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05 weights file: report FID")
    a.add_argument("--cache", default=None, help="cache folder for the trained extractor (default $IQVAE_CACHE)")
    a.add_argument("--lpips-backbone", default=None, help="torchvision VGG16/AlexNet weights file (LPIPS diversity)")
    a.add_argument("--lpips-lin", default=None, help="LPIPS calibration weights file")
    a.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"], help="LPIPS backbone")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.add_argument("--jobs", type=int, default=None,
                   help="runs trained side by side in worker processes, each with cores/jobs torch threads "
                        "(default: 2 without a GPU, where one-thread workers beat one two-thread run; 1 with a GPU)")
    a.set_defaults(func=run_ablation)

    register_modalities(bsub)
