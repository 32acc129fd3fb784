"""The command line: every option in --help, clear errors (exit 2) for bad input, the demo end to end."""

import json
import re
import subprocess
import sys

import pytest

from iqvae.cli import main
from iqvae.config import describe


def test_help_lists_every_training_option(capsys):
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    for cmd, cls in (("train-tokenizer", TokenizerRunConfig), ("train-transformer", TransformerRunConfig)):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        missing = [key for key, *_ in describe(cls) if key not in out]
        assert not missing, (cmd, missing)


@pytest.mark.parametrize("argv, fragment", [
    (["train-tokenizer", "--run-dir", "X", "--set", "model.nope=1"], "unknown option 'model.nope'"),
    (["train-tokenizer", "--run-dir", "X", "--set", "train.steps=zero"], "'train.steps' expects an integer"),
    (["train-tokenizer", "--run-dir", "X", "--preset", "huge"], "unknown preset 'huge'"),
    (["train-tokenizer", "--run-dir", "X", "--cond", "smell"], "must be one of"),
    # each stage's train options are only the ones it reads
    (["train-tokenizer", "--run-dir", "X", "--set", "train.grad_accum=2"], "unknown option 'train.grad_accum'"),
    (["train-tokenizer", "--run-dir", "X", "--set", "train.val_every=2"], "unknown option 'train.val_every'"),
    (["train-transformer", "--run-dir", "X", "--set", "train.image_every=2"], "unknown option 'train.image_every'"),
    (["train-tokenizer", "--run-dir", "X", "--set", "train.device=gpu"], "'train.device' must be auto, cpu, cuda"),
    (["train-transformer", "--run-dir", "X"], "pass --codes"),
    (["train-transformer", "--run-dir", "X", "--codes", "/nonexistent"], "run `iqvae encode` first"),
    (["encode", "--tokenizer", "/nonexistent", "--out", "X"], "not a checkpoint folder"),
    (["sample", "--model", "/nonexistent", "--world", "shapes", "--out", "x.png"], "not a pipeline folder"),
    (["demo", "--conds", "seg,smell"], "unknown condition modality 'smell'"),
    (["demo", "--min-p", "2"], "--min-p must be in [0, 1] (0 to disable), got 2.0"),
    (["demo", "--temperature", "0"], "--temperature must be a number > 0, got 0.0"),
    # `iqvae evaluate` shares `iqvae sample`'s sampler flags and their checks (before the model is read)
    (["evaluate", "--model", "/nonexistent", "--top-k", "-3"],
     "--top-k must be an integer >= 1 (or 0 / --no-top-k to disable), got -3"),
    (["evaluate", "--model", "/nonexistent", "--top-p", "0"], "--top-p must be in (0, 1] (or omitted to disable)"),
    (["evaluate", "--model", "/nonexistent", "--min-p", "-1"], "--min-p must be in [0, 1] (0 or omitted to disable)"),
    (["evaluate", "--model", "/nonexistent", "--no-top-k", "--top-k", "0"], "--model '/nonexistent' is not a folder"),
])
def test_bad_input_is_a_clear_error(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_sampler_arguments_are_checked(tmp_path, capsys):
    from iqvae.data.config import DataConfig
    from iqvae.data.shapes import ShapesDataset
    from iqvae.models.gpt import GPT, GPTConfig
    from iqvae.models.tokenizer import IQVAE, IQVAEConfig
    from iqvae.pipeline import IQVAEPipeline

    spec = ShapesDataset("train", size=1, resolution=16, modalities=("seg",)).condition_spec("seg")
    tok = IQVAE(IQVAEConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, embed_dim=8,
                            num_codes=8, cond_num_codes=8), spec)
    tok.data_config = DataConfig(resolution=16, cond="seg", test_size=4)
    pipe = IQVAEPipeline(tok, GPT(GPTConfig(cond_vocab=8, image_vocab=8, n_cond=64, n_image=64, n_layer=1, n_head=1,
                                            n_embd=8)))
    pipe.save_pretrained(tmp_path / "p")
    base = ["sample", "--model", str(tmp_path / "p"), "--world", "shapes", "--out", str(tmp_path / "g.png"), "-n", "2"]
    for extra, fragment in ((["--top-k", "-3"], "--top-k must be"), (["--top-p", "1.5"], "--top-p must be"),
                            (["--min-p", "2"], "--min-p must be"), (["--temperature", "0"], "--temperature must be"),
                            (["--index", "99"], "outside the test split")):
        assert main(base + extra) == 2
        assert fragment in capsys.readouterr().err
    assert main(base + ["--top-p", "0.9", "--top-k", "0"]) == 0  # top-p alone works
    one = (tmp_path / "g.png").read_bytes()
    assert main(base + ["--top-p", "0.9", "--no-top-k"]) == 0  # the other spelling of no top-k: the same samples
    assert (tmp_path / "g.png").read_bytes() == one
    assert main(base + ["--top-p", "0.9"]) == 0  # top-k 100 > the 8 codes: filters nothing, so the same samples too
    assert (tmp_path / "g.png").read_bytes() == one
    assert main(base + ["--min-p", "0.2"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_presets_and_regularizer_bench(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^paper\s+256\s+16x16\s+1024x256", out, flags=re.M)
    assert re.search(r"^  paper: none$", out, flags=re.M)  # the paper preset turns on none of our additions
    assert re.search(r"^  small: tokenizer.model.colour_head, .*transformer.model.above_window=3$", out, flags=re.M)
    assert main(["bench", "sgw", "--preset", "tiny", "--steps", "2", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    # timings vary with the machine's load: check the printed share against the printed times, not a range
    t_vr = float(re.search(r"training step, iq-vr \(with sliced GW\):\s+([\d.]+) ms", out).group(1))
    t_sgw = float(re.search(r"sliced GW forward\+backward alone:\s+([\d.]+) ms", out).group(1))
    share = float(re.search(r"share of the step .*?([\d.]+)%", out).group(1))
    assert t_vr > 0 and t_sgw >= 0
    assert abs(share - 100 * t_sgw / t_vr) <= 0.005 + 100 * 0.005 * (1 + t_sgw / t_vr) / t_vr


@pytest.mark.slow
def test_demo_trains_a_condition_with_its_own_preset_where_one_exists():
    """`demo-edge` (the demo plus quality-edge's condition codes) is what the demo trains edge with, `demo-text` (the
    caption's ids as the prefix) text; seg and layout, which have no `demo-<cond>` preset, get `demo`; the run
    records the preset it used."""
    from iqvae.config import build_config
    from iqvae.demo import demo_preset
    from iqvae.train.tokenizer import TokenizerRunConfig

    assert [demo_preset("demo", c) for c in ("seg", "edge", "keypoints", "text", "layout")] == [
        "demo-seg", "demo-edge", "demo-keypoints", "demo-text", "demo"]
    assert demo_preset("demo-quick", "edge") == "demo-quick"
    edge = build_config(TokenizerRunConfig, "tokenizer", preset="demo-edge")
    base = build_config(TokenizerRunConfig, "tokenizer", preset="demo")
    quality = build_config(TokenizerRunConfig, "tokenizer", preset="quality-edge")
    assert (edge.model.cond_cell_target, edge.model.cond_num_codes) == ("colour_bins", 256)
    assert (quality.model.cond_cell_target, quality.model.cond_num_codes) == ("colour_bins", 256)
    assert (base.model.cond_cell_target, base.model.cond_num_codes) == ("condition", 64)
    assert edge.train == base.train and edge.data == base.data  # only the condition codes differ
    seg = build_config(TokenizerRunConfig, "tokenizer", preset="demo-seg")
    assert seg == base  # demo-seg only says how the demo samples seg


def test_demo_samples_with_its_own_preset_settings_where_it_has_them():
    """A condition's demo preset with a `quality:` section (demo-seg, demo-edge: chosen on the val split for the demo's
    models) sets how the demo samples it; one without (demo-keypoints, or `--quick`'s demo-quick) falls back to the
    condition's quality preset; a flag still wins."""
    from iqvae.bench.quality import quality_settings
    from iqvae.demo import sampling_preset, sampling_settings

    assert [sampling_preset(c) for c in ("seg", "edge", "keypoints", "layout")] == [
        "demo-seg", "demo-edge", "quality-keypoints", "quality-layout"]
    assert [sampling_preset(c, "demo-quick") for c in ("seg", "edge")] == ["quality-seg", "quality-edge"]
    for cond, name in (("seg", "demo-seg"), ("edge", "demo-edge"), ("keypoints", "quality-keypoints")):
        q = quality_settings(name)
        assert sampling_settings(cond) == {"temperature": q.temperature, "cfg_scale": q.cfg_scale, "min_p": q.min_p}
    assert (sampling_settings("seg")["temperature"], sampling_settings("seg")["cfg_scale"]) == (0.5, 1.25)
    assert quality_settings("quality-seg").cfg_scale == 1.5  # so the demo's own choice is what the test above saw
    assert sampling_settings("seg", temperature=0.9, cfg_scale=1.0) == {"temperature": 0.9, "cfg_scale": 1.0,
                                                                        "min_p": None}


def test_demo_quick_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "iqvae.cli", "demo", "--quick", "--out", str(out), "--no-progress",
           "--conditions", "3", "--samples", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (out / "report.html").read_text()
    for cond in ("seg", "edge", "keypoints"):
        assert f"Condition: {cond}" in html and (out / cond / "tokenizer" / "model.safetensors").is_file()
    assert html.count("data:image/png;base64,") >= 9 and "http" not in html.replace("http-equiv", "")
    metrics = json.loads((out / "metrics.json").read_text())

    # the reported metrics equal an independent recomputation from the saved pipeline at the same seed
    from iqvae.data.config import build_dataset
    from iqvae.evaluation.samples import draw_samples, shapes_metrics
    from iqvae.pipeline import IQVAEPipeline

    from iqvae.bench.quality import QUALITY_BARS, quality_settings

    for cond in ("seg", "edge", "keypoints"):  # --quick: sampled with the quality-<cond> preset's T and guidance scale
        assert metrics[cond]["sampling_preset"] == f"quality-{cond}"
        q = quality_settings(f"quality-{cond}")
        assert (metrics[cond]["temperature"], metrics[cond]["cfg_scale"], metrics[cond]["min_p"]) == (
            q.temperature, q.cfg_scale, q.min_p)
        marks = metrics[cond]["bars"]
        assert [b["metric"] for b in marks] == list(QUALITY_BARS[cond])
        for b in marks:
            assert b["value"] == metrics[cond]["metrics"][b["metric"]] and b["bar"] == QUALITY_BARS[cond][b["metric"]]
            assert b["meets"] == (b["value"] >= b["bar"])
    assert metrics["edge"]["cfg_scale"] == 2.0  # guided: the demo's transformer has a learned null condition
    for cond in ("seg", "edge"):
        pipe = IQVAEPipeline.from_pretrained(out / cond)
        test = build_dataset(pipe.tokenizer.data_config, "test")
        s = draw_samples(pipe, test, cond, num_conditions=3, samples_per_condition=3, seed=0,
                         temperature=metrics[cond]["temperature"], guidance_scale=metrics[cond]["cfg_scale"],
                         min_p=metrics[cond]["min_p"])
        again = shapes_metrics(s, [test[i].cond["seg"] for i in s.indices])
        for k, v in again.items():
            assert metrics[cond]["metrics"][k] == pytest.approx(v, abs=1e-9), (cond, k)

    # a second run reuses every finished stage (no training: the timings stay as they were)
    before = (out / "seg" / "timings.json").read_text()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "seg" / "timings.json").read_text() == before
    assert "training tokenizer" not in r.stderr


def test_readme_manual_pipeline_samples_from_the_transformer_run(tmp_path):
    """train-tokenizer -> encode -> train-transformer, then `sample --model <stage2 run>` finds the tokenizer through
    the codes; the pipeline equals one assembled by hand from the two run folders."""
    import torch

    from iqvae.models.gpt import GPT
    from iqvae.models.tokenizer import IQVAE
    from iqvae.pipeline import IQVAEPipeline

    tiny = ["--preset", "tiny", "--no-progress", "--set", "train.steps=2", "--set", "train.checkpoint_every=2"]
    assert main(["train-tokenizer", *tiny, "--cond", "seg", "--set", "data.train_size=16", "--set", "data.val_size=4",
                 "--set", "data.test_size=4", "--run-dir", str(tmp_path / "stage1")]) == 0
    assert main(["encode", "--tokenizer", str(tmp_path / "stage1"), "--out", str(tmp_path / "codes"),
                 "--no-progress"]) == 0
    assert main(["train-transformer", *tiny, "--set", "model.pos_init=spatial", "--codes", str(tmp_path / "codes"),
                 "--run-dir", str(tmp_path / "stage2")]) == 0
    assert main(["sample", "--model", str(tmp_path / "stage2"), "--world", "shapes", "--index", "0", "-n", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    pipe = IQVAEPipeline.from_pretrained(tmp_path / "stage2")
    tok, gpt = IQVAE.from_pretrained(tmp_path / "stage1"), GPT.from_pretrained(tmp_path / "stage2")
    for a, b in ((pipe.tokenizer, tok), (pipe.transformer, gpt)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert gpt.config.pos_init == "spatial" and gpt.config.image_grid == list(tok.tokens_shape)
    # a transformer whose tokenizer has gone is a clear error
    import shutil

    shutil.rmtree(tmp_path / "stage1")
    assert main(["sample", "--model", str(tmp_path / "stage2"), "--world", "shapes", "--out", "x.png"]) == 2


def test_speed_benches_print_consistent_tables(capsys):
    """`bench sampling` and `bench train` at toy size: the printed ratios are the printed rates' quotients."""
    assert main(["bench", "sampling", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--vocab", "32",
                 "--seq", "16", "--batch", "1,2"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)x$",
                      out, flags=re.M)
    assert [r[0] for r in rows] == ["1", "2"] and all(r[1] == "8" for r in rows)
    for r in rows:
        assert float(r[4]) == pytest.approx(float(r[2]) / float(r[3]), rel=0.02, abs=0.01)
    assert main(["bench", "train", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--vocab", "32",
                 "--seq", "16", "--batch", "2", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^\s+2\s+4\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    teacher, gumbel, ratio, embed, embed_ratio = map(float, row.groups())
    assert ratio == pytest.approx(gumbel / teacher, rel=0.02, abs=0.002)
    assert embed_ratio == pytest.approx(embed / teacher, rel=0.02, abs=0.002)


def test_roofline_ratio_closed_form():
    """Reference: sum_j 2 N B (n_cond + j) / F; cached: prefill 2 N B n_cond / F plus
    n_image * max(N bytes / BW, 2 N B / F)."""
    from iqvae.bench.speed import roofline_ratio
    from iqvae.models.gpt import GPTConfig

    cfg = GPTConfig(cond_vocab=4, image_vocab=4, n_cond=2, n_image=2, n_layer=1, n_head=1, n_embd=4)
    # N = 10, F = 100, BW = 40, 4 bytes: ref = (40 + 60) / 100 = 1; step = max(1, 0.2) = 1; cached = 0.4 + 2
    assert roofline_ratio(cfg, 10, 1, 100.0, 40.0, 4) == pytest.approx(1 / 2.4)
    # batch 8: ref = 8; step = max(1, 1.6) = 1.6 (compute-bound); cached = 3.2 + 3.2
    assert roofline_ratio(cfg, 10, 8, 100.0, 40.0, 4) == pytest.approx(8 / 6.4)
