"""The probes of ``iqvae bench ablation`` against closed forms and independent evaluations."""

import math

import pytest
import torch

from iqvae.bench.ablation_probes import PROBE_SEED, exposure_probe, gumbel_share, latent_probe
from iqvae.bench.ablation_why import spearman
from iqvae.data.record import collate
from iqvae.data.shapes import ShapesDataset
from iqvae.losses import sliced_gromov_wasserstein_reference
from iqvae.models.sgw import random_projections
from iqvae.models.tokenizer import IQVAE, IQVAEConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer(ds):
    torch.manual_seed(0)
    cfg = IQVAEConfig(variant="iq-vr", resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, embed_dim=8,
                      num_codes=16, cond_num_codes=16)
    return IQVAE(cfg, ds.condition_spec("seg")).eval()


def test_latent_probe_is_the_per_scene_sliced_gw_and_its_scale_free_part():
    ds = ShapesDataset("test", size=5, resolution=16, modalities=("seg",))
    tok = _tokenizer(ds)
    got = latent_probe(tok, ds, "seg", n=5, projections=16, batch_size=2)  # batches of 2: 2 + 2 + 1 scenes
    dirs = random_projections(8, 16, generator=torch.Generator().manual_seed(PROBE_SEED))
    b = collate([ds[i] for i in range(5)])
    with torch.no_grad():
        enc = tok.encode(b.image, b.cond["seg"])
    zc, zx = (z.flatten(2).transpose(1, 2) for z in (enc.z_cond, enc.z_img))
    want = sum(float(sliced_gromov_wasserstein_reference(zc[k], zx[k], projections=dirs)) for k in range(5)) / 5
    assert got["sgw_pre"] == pytest.approx(want, rel=1e-4)
    rms = float(((zx - zx.mean(1, keepdim=True)) ** 2).sum(-1).mean(-1).sqrt().mean())
    assert got["rms_img"] == pytest.approx(rms, rel=1e-5) and got["probe_scenes"] == 5
    # image latents 3x larger: GW grows, the scale-free value does not move
    with torch.no_grad():
        tok.encoder.conv_out.weight.mul_(3.0)
        tok.encoder.conv_out.bias.mul_(3.0)
    big = latent_probe(tok, ds, "seg", n=5, projections=16)
    assert big["rms_img"] == pytest.approx(3 * got["rms_img"], rel=1e-5)
    assert big["sgw_pre"] > 2 * got["sgw_pre"]
    assert big["sgw_pre_scaled"] == pytest.approx(got["sgw_pre_scaled"], rel=1e-4)


class CopyPrevious(torch.nn.Module):
    """p(x_0) uniform over V; p(x_j | x_<j) = 0.7 on x_{j-1}, 0.1 on each other token (V = 4)."""

    def forward(self, cond, image):
        B, t = image.shape
        p = torch.full((B, t, 4), 0.1)
        p[:, 0] = 0.25
        p[:, 1:].scatter_(-1, image[:, :-1, None], 0.7)
        return p.log()


def test_exposure_probe_against_its_closed_form():
    B, t = 4000, 5
    gold = torch.full((B, t), 2)
    r = exposure_probe(CopyPrevious(), torch.zeros(B, 3, dtype=torch.long), gold, batch_size=1000)
    lb = lambda p: -math.log2(p)  # noqa: E731
    assert r["nll_tf"] == pytest.approx((2 + (t - 1) * lb(0.7)) / t, rel=1e-6)
    # the draw at 0 keeps the gold token with probability 1/4, at j >= 1 with 0.7; the gold token at j is then 0.7
    # likely when the draw at j-1 kept its gold token and 0.1 likely otherwise
    def expect(keep):
        return keep * lb(0.7) + (1 - keep) * lb(0.1)

    want = (2 + expect(0.25) + (t - 2) * expect(0.7)) / t
    assert r["nll_sampled"] == pytest.approx(want, abs=0.03)
    assert r["exposure_gap"] == pytest.approx(r["nll_sampled"] - r["nll_tf"], abs=1e-9) and r["exposure_gap"] > 0.5
    assert r["prefix_error"] == pytest.approx((0.75 + (t - 1) * 0.3) / t, abs=0.01)
    # a model that ignores its inputs has no exposure gap
    class Blind(CopyPrevious):
        def forward(self, cond, image):
            return super().forward(cond, torch.full_like(image, 2))

    assert exposure_probe(Blind(), torch.zeros(64, 3, dtype=torch.long), gold[:64])["exposure_gap"] == 0.0


def test_gumbel_share_weights_each_logged_window(tmp_path):
    f = tmp_path / "transformer.csv"
    # windows of 50, 50 and 20 steps; Gumbel steps are 13, 12 and 5 of them; as the trainer logs them, gs_applied is
    # the share of Gumbel steps in the window and the gs_* shares are means over those steps only
    f.write_text("step,lr,loss,gs_candidates,gs_replaced,gs_rate,gs_applied\n"
                 f"49,0.1,2.0,0.5,0.1,0.1,{13 / 50}\n"
                 f"99,0.1,2.0,0.6,0.3,0.5,{12 / 50}\n"
                 f"119,0.1,2.0,0.8,0.6,0.9,{5 / 20}\n")
    g = gumbel_share(f)
    assert g["gs_replaced"] == pytest.approx((0.1 * 13 + 0.3 * 12 + 0.6 * 5) / 30)
    assert g["gs_candidates"] == pytest.approx((0.5 * 13 + 0.6 * 12 + 0.8 * 5) / 30)
    assert g["gs_replaced_last"] == pytest.approx(0.6)
    (tmp_path / "teacher.csv").write_text("step,lr,loss\n49,0.1,2.0\n")
    assert gumbel_share(tmp_path / "teacher.csv")["gs_replaced"] is None
    assert gumbel_share(tmp_path / "missing.csv")["gs_replaced"] is None


def test_spearman():
    scipy = pytest.importorskip("scipy.stats")
    x, y = [0.1, 0.3, 1.0, 3.0, 10.0], [5.0, 4.0, 4.0, 1.0, 2.0]
    assert spearman(x, y) == pytest.approx(scipy.spearmanr(x, y).statistic)
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x[:2], y[:2]) is None and spearman(x, [1.0] * 5) is None


def test_gumbel_share_reads_the_trainers_log_at_any_logging_window(tmp_path):
    """Oracle: the same deterministic run logged every step and every 4 steps gives the same shares, equal to the mean
    over the Gumbel steps of the per-step log."""
    import csv

    from iqvae.cli import main

    tiny = ["--preset", "tiny", "--no-progress", "--set", "train.threads=1"]
    assert main(["train-tokenizer", *tiny, "--run-dir", str(tmp_path / "tok"), "--set", "train.steps=2"]) == 0
    assert main(["encode", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "codes"), "--splits",
                 "train,val", "--no-progress"]) == 0
    gumbel = ["--set", "gumbel.mode=gumbel", "--set", "gumbel.every=2", "--set", "gumbel.threshold=-1.0",
              "--set", "gumbel.schedule=constant", "--set", "gumbel.max_rate=0.5", "--set", "train.steps=12"]
    shares = {}
    for every in (1, 4):
        run = tmp_path / f"gpt-{every}"
        assert main(["train-transformer", *tiny, *gumbel, "--codes", str(tmp_path / "codes"), "--run-dir", str(run),
                     "--set", f"train.log_every={every}"]) == 0
        shares[every] = gumbel_share(run / "transformer.csv")
    rows = [r for r in csv.DictReader((tmp_path / "gpt-1" / "transformer.csv").open()) if float(r["gs_applied"]) == 1]
    assert len(rows) == 6
    assert shares[1]["gs_replaced"] == pytest.approx(sum(float(r["gs_replaced"]) for r in rows) / 6)
    assert 0 < shares[1]["gs_replaced"] <= 1
    for key in ("gs_replaced", "gs_candidates"):
        assert shares[4][key] == pytest.approx(shares[1][key], rel=1e-6)
