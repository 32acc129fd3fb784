"""``iqvae bench ablation`` end to end at toy size: 2 systems x 2 seeds, a 2-point Fig. 6 sweep, then a re-run."""

import argparse
import json
import statistics

import pytest

from iqvae.bench.ablation import run_ablation_bench
from iqvae.errors import IQVAEError
from iqvae.machine import usable_cores

SYSTEMS = ["iq-vr", "iq-vr+gs"]  # the two share each seed's tokenizer
TINY = [
    "tokenizer.data.train_size=32", "tokenizer.data.val_size=8", "tokenizer.data.test_size=8",
    "tokenizer.model.ch=8", "tokenizer.model.embed_dim=8", "tokenizer.model.num_codes=16",
    "tokenizer.model.cond_num_codes=16", "tokenizer.model.sgw_projections=4", "tokenizer.train.steps=2",
    "tokenizer.train.batch_size=4", "transformer.model.n_layer=1", "transformer.model.n_embd=16",
    "transformer.train.steps=2", "transformer.train.batch_size=4", "ablation.conditions=2", "ablation.samples=2",
    "ablation.extractor_steps=2", "ablation.recon_items=4", "ablation.grid_conditions=2", "ablation.fig6_grids=[4, 8]",
    "ablation.temperature=0.7",
]


def _args(tmp, **kw):
    base = dict(world="shapes", cond="seg", budget="small", seeds=2, systems=",".join(SYSTEMS), out=str(tmp / "results"),
                work=str(tmp / "work"), no_progress=True, set=list(TINY), cache=str(tmp / "cache"), jobs=2,
                sweep_sgw=None, sweep_sgw_on=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    assert run_ablation_bench(_args(tmp)) == 0
    return tmp


def test_outputs_exist_with_one_row_per_system(bench):
    out = bench / "results"
    for name in ("ablation.md", "ablation.json", "ablation.png", "ablation_fig6.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    md = (out / "ablation.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| iq-") and " (IQ-VAE" in line]
    assert [r.split(" ")[1] for r in rows] == SYSTEMS
    assert "FD-shapes-cnn" in md and "| FID" not in md
    assert "LPIPS diversity: n/a" in md
    assert "**iq-vr → iq-vr+gs**" in md and "combined std" in md
    data = json.loads((out / "ablation.json").read_text())
    assert data["info"]["seeds"] == [0, 1] and data["info"]["machine"]["cpu_count"]
    assert sorted({(p["grid"], p["tokens"]) for p in data["fig6"]}) == [(4, 16), (8, 64)]
    assert "| 4x4 | 16 |" in md
    assert "top-k 100, temperature 0.7;" in md  # every system is evaluated at the bench's temperature
    for name in SYSTEMS:
        for seed in (0, 1):
            proto = json.loads((bench / "work" / "small" / "eval" / f"{name}-s{seed}" / "metrics.json").read_text())
            assert proto["protocol"]["temperature"] == 0.7


def test_summary_matches_per_seed_numbers(bench):
    data = json.loads((bench / "results" / "ablation.json").read_text())
    md = (bench / "results" / "ablation.md").read_text()
    for name in SYSTEMS:
        runs = data["per_seed"][name]
        assert [r["seed"] for r in runs] == [0, 1]
        for key in ("fd", "swd", "nll_bits", "palette_accuracy", "mask_miou", "mode_coverage", "train_seconds"):
            vals = [r[key] for r in runs]
            s = data["summary"][name][key]
            assert s["mean"] == pytest.approx(statistics.mean(vals), rel=1e-12, abs=1e-15)
            assert s["std"] == pytest.approx(statistics.stdev(vals), rel=1e-9, abs=1e-15)
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} ("))
        assert f"{data['summary'][name]['nll_bits']['mean']:.4g}" in row
        # the per-seed NLL is the evaluation's NLL on the validation codes
        ev = json.loads((bench / "work" / "small" / "eval" / f"{name}-s1" / "metrics.json").read_text())
        assert runs[1]["nll_bits"] == ev["metrics"]["nll"]["bits_per_token"] and ev["metrics"]["nll"]["split"] == "val"
        # the colour probes are the evaluation's reconstruction metrics (the Shapes world's exact ones)
        rec = ev["metrics"]["reconstruction"]
        assert (runs[1]["recon_palette"], runs[1]["code_colour_purity"], runs[1]["codes_per_colour"]) == (
            rec["palette_accuracy"], rec["code_colour_purity"], rec["codes_per_colour"])
    assert "image code colour purity" in md and "recon. palette acc." in md
    # the Gumbel shares are those of the run's own log (read afresh, not from the probe cache)
    from iqvae.bench.ablation_probes import gumbel_share

    for seed in (0, 1):
        log = gumbel_share(bench / "work" / "small" / "gpt" / f"iq-vr+gs-s{seed}" / "transformer.csv")
        assert log["gs_replaced"] is not None  # step 0 is a Gumbel step, so the log has a share to compare
        assert data["per_seed"]["iq-vr+gs"][seed]["gs_replaced"] == log["gs_replaced"]
    # iq-vr and iq-vr+gs use the same tokenizer (one tokenizer run per seed, plus the 4x4 and 8x8 Fig. 6 points:
    # the preset's own grid is 16 x 16)
    tok_runs = sorted(p.name for p in (bench / "work" / "small" / "tok").iterdir())
    assert tok_runs == ["iq-vr-g4-s0", "iq-vr-g8-s0", "iq-vr-s0", "iq-vr-s1"]
    assert data["per_seed"]["iq-vr"][0]["recon_ssim"] == data["per_seed"]["iq-vr+gs"][0]["recon_ssim"]


def test_parallel_workers_equal_a_sequential_run(bench, tmp_path):
    """--jobs 2 (spawned workers, cores/2 threads each) writes the numbers of a one-process run with that thread count."""
    threads = max(1, usable_cores() // 2)
    seq = [*TINY, f"tokenizer.train.threads={threads}", f"transformer.train.threads={threads}"]
    assert run_ablation_bench(_args(tmp_path, set=seq, jobs=1, cache=str(bench / "cache"))) == 0
    par = json.loads((bench / "results" / "ablation.json").read_text())
    one = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert par["info"]["jobs"] == 2 and one["info"]["jobs"] == 1
    timing = {"tokenizer_seconds", "transformer_seconds", "train_seconds"}
    for name in SYSTEMS:
        for a, b in zip(par["per_seed"][name], one["per_seed"][name]):
            assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert [p["nll_bits"] for p in par["fig6"]] == [p["nll_bits"] for p in one["fig6"]]


def test_rerun_reuses_finished_runs(bench):
    work = bench / "work" / "small"
    watched = [work / "tok" / "iq-vr-s0" / "tokenizer" / "model.safetensors",
               work / "gpt" / "iq-vr+gs-s1" / "transformer" / "model.safetensors",
               work / "eval" / "iq-vr-s0" / "metrics.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    first = json.loads((bench / "results" / "ablation.json").read_text())["info"]
    assert run_ablation_bench(_args(bench)) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before
    # the report keeps the wall time of the invocation that trained the runs, beside this one's
    again = json.loads((bench / "results" / "ablation.json").read_text())["info"]
    ledger = again["invocations"]
    assert len(ledger) == 2 and ledger[0]["wall_seconds"] == first["wall_seconds"]
    assert ledger[1]["wall_seconds"] == again["wall_seconds"] and ledger[0]["systems"] == SYSTEMS
    md = (bench / "results" / "ablation.md").read_text()
    assert (f"oldest first: 1. {first['wall_seconds'] / 60:.1f} min (2 system(s) x 2 seed(s), 2 worker(s)" in md
            and f"2. {again['wall_seconds'] / 60:.1f} min" in md)


def test_changed_config_in_same_work_folder_is_refused(bench):
    with pytest.raises(IQVAEError, match="another configuration"):
        run_ablation_bench(_args(bench, set=[*TINY, "tokenizer.train.steps=3"]))


@pytest.mark.parametrize("kw, match", [
    ({"world": "ade20k"}, "--world"), ({"systems": "iq-vr,nope"}, "--systems"), ({"seeds": 0}, "--seeds"),
    ({"set": ["model.ch=3"]}, "--set"), ({"set": ["ablation.conditions=0"]}, "ablation.conditions"),
    ({"set": ["ablation.probe_items=-1"]}, "ablation.probe_items"),
    ({"set": ["ablation.temperature=0"]}, "ablation.temperature"),
    ({"sweep_sgw": "0.1,a"}, "--sweep-sgw"), ({"sweep_sgw": "-1"}, "--sweep-sgw"), ({"sweep_sgw": "1,1"}, "--sweep-sgw"),
    ({"sweep_sgw": "1", "sweep_sgw_on": "mid"}, "--sweep-sgw-on"), ({"sweep_sgw_on": "pre"}, "--sweep-sgw-on"),
])
def test_bad_options(tmp_path, kw, match):
    with pytest.raises(IQVAEError, match=match):
        run_ablation_bench(_args(tmp_path, **kw))


def test_full_budget_runs_on_cpu_with_toy_overrides(tmp_path):
    """`--budget full` is the same code path with the ablation-full preset (16 x 16 tokens at 32 px)."""
    args = _args(tmp_path, budget="full", seeds=1, systems="iq-vr+gs", jobs=1,
                 set=[*TINY, "ablation.fig6_grids=[]", "tokenizer.model.num_res_blocks=1",
                      "transformer.model.n_layer=1", "transformer.model.n_head=2"])
    assert run_ablation_bench(args) == 0
    md = (tmp_path / "results" / "ablation.md").read_text()
    assert "Budget `full`" in md and "iq-vr+gs" in md
    info = json.loads((tmp_path / "results" / "ablation.json").read_text())["info"]
    assert info["budget"] == "full" and info["preset"] == "ablation-full"
    assert info["tokenizer_config"]["model"]["ch_mult"] == [1, 2]


def test_work_groups_run_longest_first():
    """All systems: the RQ row (a 3x longer sequence) first, then the two transformers on iq-vr's tokenizer, ... ;
    the sweep's points join seed 0 only."""
    from iqvae.bench.ablation import _system_cost, work_groups
    from iqvae.bench.ablation_runs import SYSTEMS, BenchSettings, Plan, sweep_systems
    from iqvae.config import build_config
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    tok = build_config(TokenizerRunConfig, "tokenizer", preset="ablation-small")
    gpt = build_config(TransformerRunConfig, "transformer", preset="ablation-small")
    plan = Plan(None, tok, gpt, BenchSettings(fig6_grids=[4, 16]), False)
    sweep = sweep_systems([0.1, 1.0], ["pre"], tok)
    plan.systems.update(sweep)
    tasks = work_groups(list(SYSTEMS), [0, 1], plan, list(sweep))
    assert [t.cost for t in tasks] == sorted((t.cost for t in tasks), reverse=True)
    assert [t.systems for t in tasks[:2]] == [("iq-vr+gs+rq",)] * 2 and tasks[-1].fig6_grid == 4
    assert [(t.seed, t.systems) for t in tasks if "sgw0.1-pre" in t.systems] == [(0, ("sgw0.1-pre",))]
    assert sum(t.systems.count("iq-vr") for t in tasks) == 2  # λ1 = 1, pre is iq-vr itself, not run twice
    assert _system_cost(SYSTEMS["iq-vr+gs"], 16, gpt) == pytest.approx(1.2 * _system_cost(SYSTEMS["iq-vr"], 16, gpt))


def test_ours_row_has_the_small_presets_additions():
    """iq-vr+gs+ours = iq-vr+gs plus exactly the additions `iqvae presets` lists for `small`."""
    from iqvae.bench.ablation import _additions, _configs
    from iqvae.bench.ablation_runs import OURS_SYSTEM, SYSTEMS, Plan
    from iqvae.config import build_config
    from iqvae.train.tokenizer import TokenizerRunConfig
    from iqvae.train.transformer import TransformerRunConfig

    small = _additions(build_config(TokenizerRunConfig, "tokenizer", preset="small"),
                       build_config(TransformerRunConfig, "transformer", preset="small"))
    tok = build_config(TokenizerRunConfig, "tokenizer", preset="ablation-small")
    gpt = build_config(TransformerRunConfig, "transformer", preset="ablation-small")
    plan = Plan(None, tok, gpt, None, False)
    assert _additions(*_configs(plan, SYSTEMS[OURS_SYSTEM])) == small
    shared = ["transformer.model.pos_init=spatial"]
    assert _additions(*_configs(plan, SYSTEMS["iq-vr+gs"])) == _additions(tok, gpt) == shared
    for name in SYSTEMS:  # every other system: the preset's additions only
        if name != OURS_SYSTEM:
            assert _additions(*_configs(plan, SYSTEMS[name])) == _additions(tok, gpt), name


def test_sweep_and_ours_row(tmp_path):
    """--sweep-sgw 0.5,1 x --sweep-sgw-on pre,post at seed 0: three new iq-vr runs with those options, the preset's
    own point (1, pre) is the iq-vr run; the sweep table and the +ours row's additions are in ablation.md."""
    import yaml

    args = _args(tmp_path, seeds=1, systems="iq-none,iq-vr,iq-vr+gs+ours", jobs=1,
                 set=[*TINY, "ablation.fig6_grids=[]", "tokenizer.train.threads=1", "transformer.train.threads=1"],
                 sweep_sgw="0.5,1", sweep_sgw_on="pre,post")
    assert run_ablation_bench(args) == 0
    tok = tmp_path / "work" / "small" / "tok"
    assert sorted(p.name for p in tok.iterdir()) == ["iq-none-s0", "iq-vr-ours-s0", "iq-vr-s0", "iq-vr-sgw0.5-post-s0",
                                                     "iq-vr-sgw0.5-pre-s0", "iq-vr-sgw1-post-s0"]
    for name, weight, on in (("iq-vr-sgw0.5-post-s0", 0.5, "post"), ("iq-vr-sgw1-post-s0", 1.0, "post"),
                             ("iq-vr-s0", 1.0, "pre")):
        cfg = yaml.safe_load((tok / name / "config.yaml").read_text())
        assert (cfg["model"]["variant"], cfg["loss"]["sgw_weight"], cfg["model"]["sgw_on"]) == ("iq-vr", weight, on)
    gpt = yaml.safe_load((tmp_path / "work" / "small" / "gpt" / "sgw0.5-pre-s0" / "config.yaml").read_text())
    assert gpt["gumbel"]["mode"] == "teacher"
    data = json.loads((tmp_path / "results" / "ablation.json").read_text())
    sweep = {(r["sgw_weight"], r["sgw_on"]): r for r in data["sweep"]}
    assert sorted(sweep) == [(0.5, "post"), (0.5, "pre"), (1.0, "post"), (1.0, "pre")]
    iqvr = data["per_seed"]["iq-vr"][0]
    assert sweep[(1.0, "pre")]["name"] == "iq-vr" and sweep[(1.0, "pre")]["palette_accuracy"] == iqvr["palette_accuracy"]
    assert sweep[(1.0, "pre")]["sgw_pre"] == iqvr["sgw_pre"]
    md = (tmp_path / "results" / "ablation.md").read_text()
    assert "## Why IQ(None) → IQ(VR): the λ1 / sgw_on sweep (seed 0)" in md
    table = [line for line in md.split("## Why IQ(None)")[1].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[1:3] for line in table] == [["0", "—"], ["0.5", "post"], ["1", "post"], ["0.5", "pre"],
                                                          ["1", "pre"]]
    assert f"{sweep[(0.5, 'post')]['sgw_pre']:.4g}" in table[1]
    assert "sgw_on = pre (2 points)" in md and "best palette acc." in md
    assert data["info"]["ours_additions"][0] == "tokenizer.model.colour_head"
    assert "the row `iq-vr+gs+ours` is the paper's full model (iq-vr+gs) with the `small` preset's additions: " \
           "`tokenizer.model.colour_head`" in md
    ours = yaml.safe_load((tmp_path / "work" / "small" / "gpt" / "iq-vr+gs+ours-s0" / "config.yaml").read_text())
    assert ours["model"]["above_window"] == 3 and ours["gumbel"]["mode"] == "gumbel"


def test_a_run_saved_before_an_option_existed_is_reused_at_that_options_default(tmp_path):
    """check_same_config reads the saved config through the dataclass: a missing key is its default (reuse), a
    changed value or an unknown key is another configuration."""
    import yaml

    from iqvae.config import build_config, to_dict
    from iqvae.stages import check_same_config
    from iqvae.train.tokenizer import TokenizerRunConfig

    cfg = build_config(TokenizerRunConfig, "tokenizer", preset="tiny")
    saved = to_dict(cfg)
    del saved["model"]["cond_attn"]  # as written before the option existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_same_config(tmp_path, cfg, "hint")  # the default keeps the old behaviour: no error
    for over in ("model.cond_attn=true", "train.steps=7"):
        other = build_config(TokenizerRunConfig, "tokenizer", preset="tiny", overrides=[over])
        with pytest.raises(IQVAEError, match="another configuration"):
            check_same_config(tmp_path, other, "hint")
    saved["model"]["retired_option"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(IQVAEError, match="another configuration"):
        check_same_config(tmp_path, cfg, "hint")
