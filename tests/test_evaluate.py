"""``iqvae evaluate`` end to end on a tiny random pipeline, checked against direct calls of the metric functions."""

import json

import pytest
import torch

from iqvae.cli import main
from iqvae.config import to_dict
from iqvae.data.config import DataConfig, build_dataset
from iqvae.errors import IQVAEError

COND, SAMPLES, SEED = 3, 2, 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from iqvae.codes import encode_dataset, write_codes
    from iqvae.models.gpt import GPT, GPTConfig
    from iqvae.models.tokenizer import IQVAE, IQVAEConfig
    from iqvae.pipeline import IQVAEPipeline

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("pipe")
    data = DataConfig(dataset="shapes", cond="seg", resolution=32, train_size=48, val_size=8, test_size=8)
    ds = build_dataset(data, "train")
    tok = IQVAE(IQVAEConfig(variant="iq-vr", resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False,
                            embed_dim=8, num_codes=16, cond_num_codes=16, sgw_projections=4), ds.condition_spec("seg"))
    tok.data_config = data
    tok.eval()
    n_image = 8 * 8
    gpt = GPT(GPTConfig(cond_vocab=16, image_vocab=16, n_cond=64, n_image=n_image, n_layer=1, n_head=2, n_embd=16))
    IQVAEPipeline(tok, gpt).save_pretrained(d)
    splits = {s: encode_dataset(tok, build_dataset(data, s), "seg", progress=False) for s in ("val", "test")}
    write_codes(d / "codes", tok, d / "tokenizer", splits, to_dict(data))
    return d


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = model_dir / "eval"
    rc = main(["evaluate", "--model", str(model_dir), "--conditions", str(COND), "--samples", str(SAMPLES),
               "--seed", str(SEED), "--extractor-steps", "3", "--predictor-steps", "3", "--cache", str(cache),
               "--recon-items", "8",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text()), (out / "metrics.md").read_text(), cache


def test_json_keys_and_names(evaluated):
    res, md, cache = evaluated
    m = res["metrics"]
    assert set(m) == {"fd", "kid", "swd", "lpips_diversity", "nll", "reconstruction", "shapes", "control"}
    assert m["fd"]["name"] == "FD-shapes-cnn" and m["kid"]["name"] == "KD-shapes-cnn"
    assert m["fd"]["real"] == COND and m["fd"]["fake"] == COND * SAMPLES
    assert m["reconstruction"]["rfd"]["name"] == "rFD-shapes-cnn"
    assert m["lpips_diversity"]["available"] is False and "LPIPS weights" in m["lpips_diversity"]["reason"]
    assert m["nll"]["split"] == "test" and m["nll"]["bits_per_token"] > 0
    assert m["swd"]["resolutions"] == [32, 16] and m["swd"]["images"] == COND
    assert not any(line.startswith(("| FID", "| KID", "| rFID")) for line in md.splitlines())
    assert "| FD-shapes-cnn |" in md and f"{SAMPLES} samples each" in md
    assert "sampling seed 7" in md and "top-k 100" in md
    sh = m["shapes"]
    scene = ("scene_accuracy", "scene_precision", "scene_recall")
    assert set(sh["samples"]) == {"palette_accuracy", "mask_miou", "mask_miou_per_image", "mode_coverage",
                                  "scene_mode_coverage", *scene}
    assert all(0.0 <= sh["samples"][k] <= 1.0 for k in scene)
    assert {k: sh["real"][k] for k in scene} == dict.fromkeys(scene, 1.0)  # the oracle row: true images
    assert sh["fit"] == ["palette_accuracy", "mask_miou", "mode_coverage"]
    assert "| palette_accuracy (samples; real ceiling) [fits the condition] |" in md
    assert "| scene_accuracy (samples; real ceiling) | " in md and "; 1 |" in md.split("| scene_accuracy")[1]
    r = m["reconstruction"]  # the tokenizer's object-level ceiling, in the JSON and the table
    assert all(0.0 <= r[f"recon_{k}"] <= 1.0 for k in scene)
    assert f"| reconstruction recon_scene_accuracy | {r['recon_scene_accuracy']:.4g} |" in md
    # the classifier was trained once into the cache and is reused
    assert len(list((cache / "extractors").glob("shapes-32-*"))) == 1
    # controllability: the seg predictor trained on the world's train split, beside its oracle
    c = m["control"]
    assert c["available"] and c["metric"] == "miou" and c["predictor"] == "shapes-seg-cnn"
    assert c["conditions"] == COND and c["samples_per_condition"] == SAMPLES
    assert len(list((cache / "predictors").glob("shapes-seg-32-*"))) == 1
    assert "| control: miou (samples; real oracle; higher is better, shapes-seg-cnn) |" in md
    # the FD floor: reference reals vs the next C x N real items, same extractor
    f = m["fd"]["floor"]
    assert f["available"] and (f["set_a"], f["set_b"]) == (COND, min(COND * SAMPLES, 8 - COND))
    assert "| FD-shapes-cnn floor (real vs real) |" in md


def test_values_match_direct_calls(model_dir, evaluated):
    from iqvae.codes import load_codes
    from iqvae.evaluation.evaluate import fd_kid, reconstructions, swd_entry
    from iqvae.evaluation.samples import draw_samples, shapes_metrics
    from iqvae.metrics.fd import frechet_distance, load_feature_classifier
    from iqvae.metrics.nll import validation_nll
    from iqvae.pipeline import IQVAEPipeline

    res, _, cache = evaluated
    m = res["metrics"]
    pipe = IQVAEPipeline.from_pretrained(model_dir)
    test = build_dataset(pipe.tokenizer.data_config, "test")
    s = draw_samples(pipe, test, "seg", num_conditions=COND, samples_per_condition=SAMPLES, seed=SEED)
    direct = shapes_metrics(s, [test[i].cond["seg"] for i in s.indices])
    assert m["shapes"]["samples"] == pytest.approx(direct, abs=1e-12)
    ext = load_feature_classifier(next((cache / "extractors").glob("shapes-32-*")))
    fake = s.images.reshape(COND * SAMPLES, 3, 32, 32)
    assert m["fd"]["value"] == pytest.approx(frechet_distance(s.real, fake, ext), rel=1e-9, abs=1e-9)
    others = torch.stack([test[i].image for i in range(COND, 8)])
    assert m["fd"]["floor"]["value"] == pytest.approx(frechet_distance(s.real, others, ext), rel=1e-9, abs=1e-9)
    from iqvae.metrics.control import miou
    from iqvae.models.predictor import ConditionPredictor

    pred = ConditionPredictor.from_pretrained(next((cache / "predictors").glob("shapes-seg-32-*")))
    seg = torch.stack(s.conds)
    assert m["control"]["samples"] == pytest.approx(miou(pred.predict(fake), seg.repeat_interleave(SAMPLES, 0)))
    assert m["control"]["real"] == pytest.approx(miou(pred.predict(s.real), seg))
    assert m["swd"]["mean"] == pytest.approx(swd_entry(s.real, s.images, SEED)["mean"], rel=1e-9)
    # FD of a set against itself is 0 through the same code path
    r_real, _ = reconstructions(pipe.tokenizer, test, "seg", 8)
    fd_same, _ = fd_kid(r_real, r_real, ext)
    assert fd_same["value"] == pytest.approx(0.0, abs=1e-6)
    assert m["reconstruction"]["rfd"]["value"] > fd_same["value"]
    codes = load_codes(model_dir / "codes", "test")
    assert m["nll"]["bits_per_token"] == pytest.approx(
        validation_nll(pipe.transformer, codes.cond, codes.image, batch_size=64), rel=1e-9)


def test_lpips_diversity_with_weight_files(model_dir, evaluated, tmp_path):
    from safetensors.torch import save_file

    from iqvae.evaluation.samples import draw_samples
    from iqvae.metrics.diversity import lpips_diversity
    from iqvae.models.lpips import LPIPS, build_lpips
    from iqvae.pipeline import IQVAEPipeline

    _, _, cache = evaluated
    ref = LPIPS("alex", random_init=True, seed=3)
    save_file({k: v.contiguous() for k, v in ref.net.state_dict().items()}, str(tmp_path / "alex.safetensors"))
    save_file({f"lin{i}.{k}": v.contiguous() for i, lin in enumerate(ref.lins) for k, v in lin.state_dict().items()},
              str(tmp_path / "lin.safetensors"))
    out = tmp_path / "eval"
    ext = next((cache / "extractors").glob("shapes-32-*"))
    assert main(["evaluate", "--model", str(model_dir), "--conditions", "2", "--samples", "3", "--seed", "1",
                 "--extractor", str(ext), "--lpips-backbone", str(tmp_path / "alex.safetensors"), "--lpips-lin",
                 str(tmp_path / "lin.safetensors"), "--lpips-net", "alex", "--recon-items", "4", "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    d = res["metrics"]["lpips_diversity"]
    assert d["available"] and d["name"] == "LPIPS-alex" and d["pairs_per_condition"] == 3
    pipe = IQVAEPipeline.from_pretrained(model_dir)
    test = build_dataset(pipe.tokenizer.data_config, "test")
    s = draw_samples(pipe, test, "seg", num_conditions=2, samples_per_condition=3, seed=1)
    lp = build_lpips(tmp_path / "alex.safetensors", tmp_path / "lin.safetensors", "alex")
    assert d["mean"] == pytest.approx(lpips_diversity(s.images, lp)["mean"], rel=1e-6)
    assert "2 conditions × 3 pairs" in (out / "metrics.md").read_text()


def test_bad_input_is_a_clear_error(model_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_dir), "--lpips-backbone", "x.pth"]) == 2
    assert "--lpips-lin" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_dir), "--codes", str(tmp_path)]) == 2
    assert "--codes" in capsys.readouterr().err
    with pytest.raises(IQVAEError, match="--conditions"):
        from iqvae.evaluation.evaluate import evaluate_model

        evaluate_model(model_dir, conditions=0)


def test_train_extractor_command(tmp_path, capsys):
    from iqvae.metrics.fd import load_feature_classifier

    out = tmp_path / "ext"
    assert main(["train-extractor", "--resolution", "32", "--train-size", "16", "--steps", "2", "--batch-size", "4",
                 "--out", str(out)]) == 0
    assert load_feature_classifier(out).name == "shapes-cnn"
    assert main(["train-extractor", "--world", "cub", "--out", str(out)]) == 2
    assert "--world" in capsys.readouterr().err


def test_text_condition_is_judged_by_scene_accuracy(tmp_path):
    """A text pipeline: the scene scores are marked as its fit metrics, the real row scores 1."""
    import math

    from iqvae.evaluation.evaluate import evaluate_model
    from iqvae.evaluation.results import write_results
    from iqvae.evaluation.samples import draw_samples
    from iqvae.metrics.scene import scene_scores
    from iqvae.models.gpt import GPT, GPTConfig
    from iqvae.models.tokenizer import IQVAE, IQVAEConfig
    from iqvae.pipeline import IQVAEPipeline

    torch.manual_seed(0)
    data = DataConfig(dataset="shapes", cond="text", resolution=16, train_size=4, val_size=4, test_size=4)
    ds = build_dataset(data, "test")
    cfg = IQVAEConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False, embed_dim=8,
                      num_codes=16, text_width=16, text_layers=1, text_heads=1, sgw_projections=4)
    tok = IQVAE(cfg, ds.condition_spec("text"))
    tok.data_config = data
    n = math.prod(tok.tokens_shape)
    gpt = GPT(GPTConfig(cond_vocab=tok.num_cond_codes, image_vocab=tok.num_image_codes, n_cond=n, n_image=n,
                        n_layer=1, n_head=1, n_embd=16))
    IQVAEPipeline(tok, gpt).save_pretrained(tmp_path / "pipe")
    res = evaluate_model(tmp_path / "pipe", conditions=2, samples=2, seed=3, recon_items=2)
    sh = res["metrics"]["shapes"]
    assert sh["fit"] == ["scene_accuracy", "scene_mode_coverage"]
    assert sh["real"]["scene_accuracy"] == sh["real"]["scene_recall"] == sh["real"]["scene_precision"] == 1.0
    pipe = IQVAEPipeline.from_pretrained(tmp_path / "pipe")
    s = draw_samples(pipe, ds, "text", num_conditions=2, samples_per_condition=2, seed=3)
    direct = scene_scores(s.images.reshape(4, 3, 16, 16), [m for m in s.metas for _ in range(2)])
    assert {k: sh["samples"][k] for k in direct} == pytest.approx(direct, abs=1e-12)
    _, md = write_results(res, tmp_path / "eval")
    text = md.read_text()
    assert "| scene_accuracy (samples; real ceiling) [fits the condition] |" in text
    assert "| mask_miou (samples; real ceiling) |" in text  # not a fit metric of text
