"""``iqvae bench modalities`` end to end at toy size (seg and text, two spawned workers), then a resumed re-run.

Oracles: every number of modalities.json / .md is read back from the per-run ``metrics.json`` files and
``timings.json``; the marks from :data:`QUALITY_BARS`; the sweep's s = 1 row from an independent unguided evaluation
of the same pipeline.
"""

import argparse
import json
import re
import shutil

import pytest
import torch

from iqvae.bench.modalities import make_plan, pinned_threads, run_modalities_bench, schedule
from iqvae.bench.modalities_report import cell
from iqvae.bench.quality import METRICS, QUALITY_BARS, QualitySettings, grid_rows, quality_settings
from iqvae.errors import ConfigError, IQVAEError

CONDS = ["seg", "text"]
T, S = 0.6, 2.0  # the toy run's temperature (set on every preset) and guidance scale (a sweep point other than 1)
TINY = [
    "tokenizer.data.train_size=32", "tokenizer.data.val_size=8", "tokenizer.data.test_size=8",
    "tokenizer.model.ch=8", "tokenizer.model.ch_mult=[1, 2, 2, 2]", "tokenizer.model.embed_dim=8",
    "tokenizer.model.num_codes=16", "tokenizer.model.cond_num_codes=16", "tokenizer.model.sgw_projections=4",
    "tokenizer.train.steps=2", "tokenizer.train.batch_size=4", "tokenizer.train.image_every=0",
    "transformer.model.n_layer=1", "transformer.model.n_embd=16", "transformer.model.n_head=2",
    "transformer.train.steps=2", "transformer.train.batch_size=4", "transformer.train.warmup_steps=0",
    "quality.conditions=3", "quality.samples=2", "quality.recon_items=4", "quality.grid_conditions=2",
    "quality.guidance_sweep=[1, 2]", f"quality.cfg_scale={S}", f"quality.temperature={T}",
]


def _args(tmp, **kw):
    base = dict(conds=",".join(CONDS), jobs=2, runs_dir=str(tmp / "runs"), out=str(tmp / "results"),
                preset_prefix="quality", resume=False, set=list(TINY), no_progress=True)
    base.update(kw)
    return argparse.Namespace(**base)


def _eval(root, cond, scale):
    return root / "runs" / cond / f"eval-T{T:g}-s{scale:g}" / "metrics.json"


def _read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modalities")
    assert run_modalities_bench(_args(tmp)) == 0
    return tmp


def test_writes_every_output(bench):
    out = bench / "results"
    for name in ("modalities.md", "modalities.json", "modalities_seg.png", "modalities_text.png", "guidance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    data = _read(out / "modalities.json")
    assert sorted(data) == sorted(CONDS)
    for cond in CONDS:
        e = data[cond]
        for key in (*METRICS, "train_seconds", "settings", "guidance"):
            assert key in e
        assert e["settings"]["preset"] == f"quality-{cond}"
        assert e["settings"]["temperature"] == T and e["settings"]["cfg_scale"] == S
        assert e["settings"]["jobs"] == 2 and e["settings"]["threads"] >= 1
        assert "transformer.model.cfg_dropout=0.1" in e["settings"]["additions"]
    md = (out / "modalities.md").read_text()
    assert "guidance.png" in md and "modalities_seg.png" in md and "`quality-text`" in md


def test_json_numbers_are_the_per_run_metrics(bench):
    data = _read(bench / "results" / "modalities.json")
    for cond in CONDS:
        e = data[cond]
        main = _read(_eval(bench, cond, S))
        assert main["protocol"]["guidance_scale"] == S and main["protocol"]["temperature"] == T
        assert (main["protocol"]["conditions"], main["protocol"]["samples_per_condition"]) == (3, 2)
        for k in (*METRICS, "mask_miou_per_image"):
            assert e[k] == main["metrics"]["shapes"]["samples"][k]
        assert [g["cfg_scale"] for g in e["guidance"]] == [1.0, 2.0]
        for g in e["guidance"]:
            ev = _read(_eval(bench, cond, g["cfg_scale"]))["metrics"]["shapes"]["samples"]
            assert all(g[k] == ev[k] for k in METRICS)
        timings = _read(bench / "runs" / cond / "timings.json")
        assert e["train_seconds"] == pytest.approx(sum(t["seconds"] for t in timings.values()), rel=1e-12)
        assert sorted(timings) == ["encode", "tokenizer", "transformer"] and e["train_resumed"] == []
        # the regulariser's weight is each preset's (quality-seg sets 0.1, quality-text keeps the default 1)
        assert e["settings"]["tokenizer"]["sgw_weight"] == {"seg": 0.1, "text": 1.0}[cond]
    md = (bench / "results" / "modalities.md").read_text()
    assert "| `quality-seg` |" in md and "lr 0.002, λ1 0.1 |" in md and "lr 0.002, λ1 1 |" in md


def test_marks_follow_the_bar_table(bench):
    data = _read(bench / "results" / "modalities.json")
    md = (bench / "results" / "modalities.md").read_text()
    for cond in CONDS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {cond} | "))
        cells = [c.strip() for c in row.strip("|").split("|")][1:1 + len(METRICS)]
        for k, c in zip(METRICS, cells):
            bar = QUALITY_BARS[cond].get(k)
            if bar is None:
                assert c == f"({data[cond][k]:.3f})"
            else:
                assert c == f"{data[cond][k]:.3f} ≥ {bar:g} " + ("✓" if data[cond][k] >= bar else "✗")
                assert data[cond]["passed"][k] == (data[cond][k] >= bar)
        assert data[cond]["meets_bar"] == all(data[cond][k] >= b for k, b in QUALITY_BARS[cond].items())


def test_cells_on_both_sides_of_a_bar():
    assert cell("seg", "palette_accuracy", 0.93) == "0.930 ≥ 0.92 ✓"
    assert cell("seg", "palette_accuracy", 0.92) == "0.920 ≥ 0.92 ✓"  # the bar itself meets it
    assert cell("seg", "palette_accuracy", 0.919) == "0.919 ≥ 0.92 ✗"
    assert cell("seg", "mode_coverage", None) == "n/a ≥ 0.85 ✗"
    assert cell("text", "palette_accuracy", 0.5) == "(0.500)"
    assert cell("text", "scene_accuracy", 0.7) == "0.700 ≥ 0.7 ✓"
    # a miss that three decimals would round up to the bar shows the digits that tell it apart
    assert cell("audio", "scene_accuracy", 0.6995442708333333) == "0.6995 ≥ 0.7 ✗"
    assert cell("audio", "scene_accuracy", 0.69999) == "0.69999 ≥ 0.7 ✗"
    assert cell("audio", "scene_accuracy", 0.6994) == "0.699 ≥ 0.7 ✗"


def test_unguided_sweep_point_equals_an_unguided_evaluation(bench):
    """The sweep's s = 1 row is `iqvae evaluate` of the same pipeline without guidance (same seed and sampler)."""
    from iqvae.evaluation.evaluate import evaluate_model

    data = _read(bench / "results" / "modalities.json")
    res = evaluate_model(bench / "runs" / "seg", conditions=3, samples=2, seed=0, top_k=100, temperature=T,
                         recon_items=4)
    assert res["protocol"]["guidance_scale"] == 1.0
    row = next(g for g in data["seg"]["guidance"] if g["cfg_scale"] == 1)
    assert all(row[k] == res["metrics"]["shapes"]["samples"][k] for k in METRICS)


def test_grid_shows_the_evaluations_own_draws(bench):
    """Whole sampler batches with the evaluation's seed draw the same images for the first conditions."""
    from iqvae.data.config import build_dataset
    from iqvae.evaluation.samples import draw_samples
    from iqvae.pipeline import IQVAEPipeline

    pipe = IQVAEPipeline.from_pretrained(bench / "runs" / "seg")
    ds = build_dataset(pipe.tokenizer.data_config, "train")  # 32 items: more than one batch of conditions
    kw = dict(samples_per_condition=2, seed=0, top_k=100, temperature=T, guidance_scale=S)
    full = draw_samples(pipe, ds, "seg", num_conditions=10, **kw)
    drawn, shown = grid_rows(QualitySettings(conditions=10, grid_conditions=2))
    assert (drawn, shown) == (8, 2)
    grid = draw_samples(pipe, ds, "seg", num_conditions=drawn, **kw)
    assert torch.equal(grid.images, full.images[:drawn])


def test_bad_requests_fail_before_any_work(tmp_path, monkeypatch):
    import iqvae.config as config

    with pytest.raises(IQVAEError, match="unknown condition 'foo'; choose from seg, layout"):
        run_modalities_bench(_args(tmp_path, conds="seg,foo"))
    with pytest.raises(ConfigError, match="unknown option 'quality.bogus'; valid options here: quality.temperature"):
        run_modalities_bench(_args(tmp_path, set=[*TINY, "quality.bogus=1"]))
    with pytest.raises(IQVAEError, match="--set expects one of tokenizer.KEY"):
        run_modalities_bench(_args(tmp_path, set=["ablation.conditions=2"]))
    with pytest.raises(IQVAEError, match="needs transformer.model.cfg_dropout > 0"):
        run_modalities_bench(_args(tmp_path, set=[*TINY, "transformer.model.cfg_dropout=0"]))
    with pytest.raises(ConfigError, match="'quality.temperature' must be a number > 0"):
        run_modalities_bench(_args(tmp_path, set=[*TINY, "quality.temperature=0"]))
    with pytest.raises(ConfigError, match=r"'quality.min_p' must be a number in \[0, 1\] or null, got 1.5"):
        run_modalities_bench(_args(tmp_path, set=[*TINY, "quality.min_p=1.5"]))
    # a preset whose quality: section has an unknown key, and one without the section
    presets = tmp_path / "presets"
    presets.mkdir()
    shutil.copy(config.PRESET_DIR / "small.yaml", presets / "small.yaml")
    (presets / "typo-seg.yaml").write_text("extends: small\nquality: {temprature: 0.6}\n")
    (presets / "plain-seg.yaml").write_text("extends: small\n")
    monkeypatch.setattr(config, "PRESET_DIR", presets)
    with pytest.raises(ConfigError, match="unknown option 'quality.temprature'"):
        run_modalities_bench(_args(tmp_path, conds="seg", preset_prefix="typo", set=[]))
    with pytest.raises(ConfigError, match="preset 'plain-seg' has no 'quality' section"):
        run_modalities_bench(_args(tmp_path, conds="seg", preset_prefix="plain", set=[]))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_quality_presets_and_bars():
    from iqvae.config import build_config
    from iqvae.modalities import get_modality
    from iqvae.train.transformer import TransformerRunConfig

    assert list(QUALITY_BARS) == ["seg", "layout", "keypoints", "edge", "text", "audio"]
    for cond, bars in QUALITY_BARS.items():
        assert set(bars) == set(get_modality(cond).fit_metrics)  # each bar judges what fits the condition
        q = quality_settings(f"quality-{cond}")
        assert (q.conditions, q.samples) == (64, 8)
        assert q.guidance_sweep == ([1, 1.5, 2, 3] if cond in ("seg", "edge", "text") else [])
        gpt = build_config(TransformerRunConfig, "transformer", preset=f"quality-{cond}")
        assert gpt.model.cfg_dropout > 0 or all(s == 1 for s in q.scales())


def test_presets_command_shows_the_quality_sections(capsys):
    from iqvae.presets_cmd import run

    run(argparse.Namespace())
    out = capsys.readouterr().out
    assert re.search(r"quality-seg: temperature 0\.5, cfg_scale 1\.5, guidance_sweep \[1\.0, 1\.5, 2\.0, 3\.0\], "
                     r"conditions 64, samples 8", out)
    assert "  paper: none" in out


def test_a_set_train_threads_wins_over_the_workers_share(tmp_path):
    """--set tokenizer.train.threads / transformer.train.threads is not overridden by cores / workers."""
    over = {"tokenizer": [], "transformer": [], "quality": []}
    plan = make_plan("seg", "quality", over, tmp_path, 2, False)
    assert plan.tok.train.threads == plan.gpt.train.threads == 2
    mine = {**over, "tokenizer": ["train.threads=1"], "transformer": ["train.threads=3"]}
    plain = plan
    plan = make_plan("seg", "quality", mine, tmp_path, 2, False)
    assert (plan.tok.train.threads, plan.gpt.train.threads) == (1, 3)
    # the plan line names the pinned stages, and none where every stage takes the workers' share
    assert pinned_threads([plan], 2) == ["tokenizer 1", "transformer 3"]
    assert pinned_threads([plain], 2) == []


def test_slowest_conditions_go_first(tmp_path):
    over = {"tokenizer": [], "transformer": [], "quality": []}
    plans = [make_plan(c, "quality", over, tmp_path, 1, False) for c in ("seg", "edge", "text")]
    order = schedule(plans, {"seg": {"train_seconds": 100.0}, "edge": {"train_seconds": 900.0},
                             "text": {"train_seconds": 500.0}})
    assert [p.cond for p in order] == ["edge", "text", "seg"]
    # never timed: a proxy from steps, batch and sizes, so the run with the most steps goes first
    longer = make_plan("audio", "quality", {**over, "tokenizer": ["train.steps=5000"]}, tmp_path, 1, False)
    assert schedule([*plans, longer], {})[0].cond == "audio"


def test_a_copied_work_folder_is_reused(bench, tmp_path, capsys):
    """The stage-2 config names its codes folder by absolute path; the bench always puts it at RUN/codes, so a work
    folder copied elsewhere is reused there (same metrics, nothing retrained), while a changed option is refused."""
    import shutil

    shutil.copytree(bench / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs" / "seg" / f"eval-T{T:g}-s{S:g}")  # one evaluation redone in the copy
    capsys.readouterr()
    assert run_modalities_bench(_args(tmp_path, resume=True, jobs=1)) == 0
    out = capsys.readouterr().out
    assert "training reused" in out and "training tokenizer" not in out and "training transformer" not in out
    assert f"seg: evaluating T={T:g} s={S:g}" in out
    before, after = _read(bench / "results" / "modalities.json"), _read(tmp_path / "results" / "modalities.json")
    for cond in CONDS:
        assert all(after[cond][k] == before[cond][k] for k in METRICS)
    with pytest.raises(IQVAEError, match="another configuration"):
        run_modalities_bench(_args(tmp_path, resume=True, jobs=1, set=[*TINY, "transformer.train.lr=0.001"]))


def test_resume_reuses_finished_runs_and_refuses_without_flag(bench, capsys):
    """Runs last: it re-writes the results with one worker."""
    files = [bench / "runs" / c / f for c in CONDS for f in ("stage1/tokenizer/model.safetensors",
                                                               "stage2/transformer/model.safetensors",
                                                               "codes/codes.json", "samples.png")]
    files += [_eval(bench, c, s) for c in CONDS for s in (1.0, S)]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    before = _read(bench / "results" / "modalities.json")
    with pytest.raises(IQVAEError, match="pass --resume"):
        run_modalities_bench(_args(bench))
    capsys.readouterr()
    assert run_modalities_bench(_args(bench, resume=True, jobs=1)) == 0
    out = capsys.readouterr().out
    assert "training reused" in out and "evaluation T=0.6 s=2 reused" in out
    assert "training tokenizer" not in out and "evaluating" not in out
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    after = _read(bench / "results" / "modalities.json")
    for cond in CONDS:
        for k in (*METRICS, "train_seconds", "guidance"):
            assert after[cond][k] == before[cond][k]
    # the work folder's ledger: the first invocation trained both conditions, the resumed one none; the report
    # lists both with their wall times and their sum
    ledger = _read(bench / "runs" / "invocations.json")
    assert [e["trained"] for e in ledger] == [CONDS, []] and [e["jobs"] for e in ledger] == [2, 1]
    md = (bench / "results" / "modalities.md").read_text()
    total = sum(e["wall_seconds"] for e in ledger) / 60
    assert f"Every invocation on this work folder ({total:.1f} min in all)" in md
    assert f"1. {ledger[0]['wall_seconds'] / 60:.1f} min, trained seg, text" in md and "none (all reused)" in md


def test_a_failed_condition_does_not_stop_the_others(bench, tmp_path, monkeypatch):
    import iqvae.bench.modalities as bm

    real = bm.run_modality

    def flaky(plan):
        if plan.cond == "text":
            raise RuntimeError("boom")
        return real(plan)

    monkeypatch.setattr(bm, "run_modality", flaky)
    out = tmp_path / "partial"
    with pytest.raises(IQVAEError, match=r"failed: text \(RuntimeError: boom\); the others' results are in .*--resume"):
        run_modalities_bench(_args(bench, resume=True, jobs=1, out=str(out)))
    assert sorted(_read(out / "modalities.json")) == ["seg"]


def test_an_interrupted_stage_resumes_and_its_evaluations_are_redone(bench, tmp_path, capsys):
    """Runs last: the seg transformer loses its final model (as if killed after its last checkpoint)."""
    before = _read(bench / "results" / "modalities.json")["seg"]
    shutil.rmtree(bench / "runs" / "seg" / "stage2" / "transformer")
    (bench / "runs" / "seg" / "stage2" / "report.json").unlink()
    out = tmp_path / "resumed"
    capsys.readouterr()
    assert run_modalities_bench(_args(bench, conds="seg", resume=True, jobs=1, out=str(out))) == 0
    log = capsys.readouterr().out
    assert "resuming transformer" in log and "training tokenizer" not in log
    assert "evaluating T=0.6 s=2" in log and "evaluating T=0.6 s=1 " in log  # new weights file: evaluated again
    e = _read(out / "modalities.json")["seg"]
    assert e["train_resumed"] == ["transformer"]
    # it resumed with the thread count the run was started with (two workers' share), not this session's
    timings = _read(bench / "runs" / "seg" / "timings.json")
    assert timings["transformer"]["threads"] == timings["tokenizer"]["threads"]
    stages = e["train_stage_seconds"]
    assert e["settings"]["train_threads"] == {k: v["threads"] for k, v in timings.items() if k in stages}
    assert "(1 thread(s))" in (out / "modalities.md").read_text()  # trained by 2 workers, reported by a 1-worker run
    assert e["train_stage_seconds"]["tokenizer"] == before["train_stage_seconds"]["tokenizer"]
    row = next(line for line in (out / "modalities.md").read_text().splitlines() if line.startswith("| seg | "))
    assert f"| {e['train_seconds']:.0f}* |" in row
    for k in METRICS:  # the resumed run restores the last checkpoint, which was the final step: same model
        assert e[k] == before[k]


def test_min_p_is_evaluated_in_its_own_folder_and_reported(bench, tmp_path, capsys):
    """quality.min_p reaches the sampler: the bench's numbers equal an independent `iqvae evaluate` with the same
    min-p (and min-p 1, greedy, differs from the run without it); the no-min-p evaluations stay where they were."""
    from iqvae.evaluation.evaluate import evaluate_model

    plain = _eval(bench, "seg", S).read_bytes()
    out = tmp_path / "minp"
    capsys.readouterr()
    over = [*TINY, "quality.min_p=1", "quality.guidance_sweep=[]"]
    assert run_modalities_bench(_args(bench, conds="seg", resume=True, jobs=1, out=str(out), set=over)) == 0
    assert "evaluating T=0.6 s=2 " in capsys.readouterr().out
    assert _eval(bench, "seg", S).read_bytes() == plain
    e = _read(out / "modalities.json")["seg"]
    assert e["settings"]["min_p"] == 1 and e["eval"].endswith(f"eval-T{T:g}-s{S:g}-p1/metrics.json")
    res = evaluate_model(bench / "runs" / "seg", conditions=3, samples=2, seed=0, top_k=100, temperature=T,
                         guidance_scale=S, min_p=1.0, recon_items=4)
    assert all(e[k] == res["metrics"]["shapes"]["samples"][k] for k in METRICS)
    sampled = _read(_eval(bench, "seg", S))["metrics"]["shapes"]["samples"]
    assert any(e[k] != sampled[k] for k in METRICS)  # greedy draws differ from the top-k draws: min-p was applied
    row = next(line for line in (out / "modalities.md").read_text().splitlines() if line.startswith("| seg | "))
    assert row.endswith(f"| {T:g} | {S:g} | 1 |")
