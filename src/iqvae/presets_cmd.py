"""``iqvae presets``: the named presets with their sizes."""

from __future__ import annotations

import argparse
import dataclasses


def preset_rows() -> list[dict]:
    import torch

    from .bench.quality import quality_settings
    from .config import additions, build_config, list_presets, load_preset, to_dict
    from .modalities import ConditionSpec
    from .models.gpt import GPT, GPTConfig
    from .train.tokenizer import TokenizerRunConfig
    from .train.transformer import TransformerRunConfig

    rows = []
    for name in list_presets():
        tok = build_config(TokenizerRunConfig, "tokenizer", preset=name)
        gpt = build_config(TransformerRunConfig, "transformer", preset=name)
        m = tok.model
        grid = m.resolution // 2 ** (len(m.ch_mult) - 1)
        depth = m.rq_depth if m.quantizer == "rq" else 1
        meta = {"cond_vocab": m.cond_num_codes or m.num_codes, "image_vocab": m.num_codes,
                "n_cond": grid * grid, "n_image": grid * grid * depth,
                "tokens_shape": [grid, grid] + ([depth] if m.quantizer == "rq" else [])}
        with torch.device("meta"):
            from .models.tokenizer import IQVAE

            # counted with a seg condition (transformer_cond changes no weight, and 'input' needs a caption)
            seg_model = dataclasses.replace(m, transformer_cond="codes")
            tok_params = sum(p.numel() for p in IQVAE(seg_model, ConditionSpec("seg", 8)).parameters())
            gpt_params = sum(p.numel() for p in GPT(GPTConfig.from_options(gpt.model, meta)).parameters())
        rows.append({
            "preset": name, "resolution": m.resolution, "tokens": f"{grid}x{grid}" + (f"x{depth}" if depth > 1 else ""),
            "codebook": f"{m.num_codes}x{m.embed_dim}", "tokenizer_params": tok_params,
            "gpt": f"{gpt.model.n_layer}x{gpt.model.n_embd}", "gpt_params": gpt_params,
            "tok_train": f"{tok.train.epochs} epochs" if tok.train.epochs else f"{tok.train.steps} steps",
            "gpt_train": f"{gpt.train.epochs} epochs" if gpt.train.epochs else f"{gpt.train.steps} steps",
            "batch": f"{tok.train.batch_size}/{gpt.train.batch_size}",
            "additions": [f"tokenizer.{a}" for a in additions(tok)] + [f"transformer.{a}" for a in additions(gpt)],
            "quality": to_dict(quality_settings(name)) if "quality" in load_preset(name) else None,
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = preset_rows()
    cols = ["preset", "resolution", "tokens", "codebook", "tokenizer_params", "gpt", "gpt_params", "tok_train",
            "gpt_train", "batch"]
    fmt = [max(len(c), *(len(_s(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, fmt)))
    for r in rows:
        print("  ".join(_s(r[c]).ljust(w) for c, w in zip(cols, fmt)))
    print("\nOur additions (not in the paper; docs/design.md) each preset turns on:")
    for r in rows:
        print(f"  {r['preset']}: {', '.join(r['additions']) or 'none'}")
    quality = [r for r in rows if r["quality"] is not None]
    if quality:
        print("\nEvaluation settings (`quality:`, read by `iqvae bench modalities`):")
        for r in quality:
            print(f"  {r['preset']}: " + ", ".join(f"{k} {v}" for k, v in r["quality"].items()))
    print("\nUse with --preset NAME; files in iqvae/presets/*.yaml (a preset may start with `extends: NAME`); "
          "override any option with --set key=value.")
    return 0


def _s(v) -> str:
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named presets and their sizes")
    p.set_defaults(func=run)
