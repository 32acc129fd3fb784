"""Eq. 3 loss, adaptive GAN weight, discriminator losses and the PatchGAN (iqvae.losses.vqgan, models.discriminator)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from iqvae.config import from_dict
from iqvae.errors import ConfigError, DataError
from iqvae.losses.vqgan import LossConfig, VQGANLoss, adaptive_weight, hinge_d_loss, vanilla_d_loss
from iqvae.models.discriminator import NLayerDiscriminator



pytestmark = pytest.mark.usefixtures("one_thread")

def _fake_output(seed=0):
    """A TokenizerOutput stand-in: recon produced by a conv 'last layer', loss parts as graph-connected scalars."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(2, 4, 32, 32, generator=g, requires_grad=True)
    last = nn.Conv2d(4, 3, 3, padding=1)
    recon = last(feat)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    extra = torch.randn(3, generator=g, requires_grad=True)
    out = SimpleNamespace(recon=recon, recon_l1=(image - recon).abs().mean(), sgw=extra[0].square(),
                          quant=extra[1].square(), cond_recon=extra[2].square())
    return out, image, last


def test_hinge_and_vanilla_closed_form():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    sp = lambda v: math.log1p(math.exp(v))
    want = 0.5 * (sum(sp(-r) for r in (2.0, 0.5, -1.0)) / 3 + sum(sp(f) for f in (-2.0, 0.0, 1.0)) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(want, rel=1e-6)


def test_generator_loss_matches_eq3_and_adaptive_weight_by_hand():
    cfg = LossConfig(sgw_weight=0.3, recon_weight=1.5, quant_weight=0.7, perceptual_weight=1.0, disc_weight=0.8,
                     cond_recon_weight=0.2, disc_start=5, disc_layers=2, disc_ch=8)
    crit = VQGANLoss(cfg)
    out, image, last = _fake_output()
    total, logs = crit.generator_loss(out, image, step=5, last_layer=last.weight)
    # by hand
    g = -crit.discriminator(out.recon).mean()
    rec = 1.5 * out.recon_l1
    gr = torch.autograd.grad(rec, last.weight, retain_graph=True)[0]
    gg = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    w = gr.norm() / (gg.norm() + 1e-4)
    assert logs["adaptive_weight"].item() == pytest.approx(w.item(), rel=1e-5)
    want = 0.3 * out.sgw + rec + 0.7 * out.quant + 0.2 * out.cond_recon + 0.8 * w.detach() * g
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["g_loss"].item() == pytest.approx(g.item(), rel=1e-5)
    assert logs["perceptual"].item() == 0.0 and not crit.perceptual_active
    for key in ("total", "recon_l1", "quant", "sgw", "cond_recon", "gan", "perceptual", "disc_factor"):
        assert key in logs and not logs[key].requires_grad
    # the adaptive weight is a constant in the backward pass
    got = torch.autograd.grad(total, last.weight, retain_graph=True)[0]
    ref = torch.autograd.grad(want, last.weight)[0]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_colour_and_cond_cell_terms_weighted_into_the_total():
    out, image, last = _fake_output(2)
    crit = VQGANLoss(LossConfig(sgw_weight=0.3, quant_weight=0.7, cond_recon_weight=0.2, colour_weight=2.5,
                                cond_cell_weight=1.5, disc_layers=2, disc_ch=8))
    base, _ = crit.generator_loss(out, image, step=0, last_layer=last.weight)  # no such fields: terms are 0
    out.colour = torch.tensor(0.4)
    total, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    assert logs["colour"].item() == pytest.approx(0.4)
    assert total.item() == pytest.approx(base.item() + 2.5 * 0.4, rel=1e-6)
    out.cond_cell = torch.tensor(0.3)
    total, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    assert logs["cond_cell"].item() == pytest.approx(0.3)
    assert total.item() == pytest.approx(base.item() + 2.5 * 0.4 + 1.5 * 0.3, rel=1e-6)


def test_adaptive_weight_clamped_and_optional():
    out, image, last = _fake_output(1)
    crit = VQGANLoss(LossConfig(disc_start=0, disc_layers=2, disc_ch=8, adaptive_max=1e-3))
    _, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    assert logs["adaptive_weight"].item() == pytest.approx(1e-3)
    crit = VQGANLoss(LossConfig(disc_start=0, disc_layers=2, disc_ch=8, adaptive_weight=False, disc_weight=0.5))
    _, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    assert logs["adaptive_weight"].item() == 1.0
    assert logs["gan"].item() == pytest.approx(0.5 * logs["g_loss"].item(), rel=1e-6)


def test_adaptive_weight_function_oracle():
    w = nn.Parameter(torch.randn(5))
    a, b = (w * 3.0).sum(), (w * 0.5).sum()  # gradients 3*1 and 0.5*1 -> ratio ~ 6
    assert adaptive_weight(a, b, w).item() == pytest.approx(3 * math.sqrt(5) / (0.5 * math.sqrt(5) + 1e-4), rel=1e-6)


def test_gan_off_before_disc_start_and_in_eval():
    cfg = LossConfig(disc_start=100, disc_layers=2, disc_ch=8)
    crit = VQGANLoss(cfg)
    out, image, last = _fake_output(2)
    total, logs = crit.generator_loss(out, image, step=99, last_layer=last.weight)
    want = out.sgw + out.recon_l1 + out.quant + out.cond_recon
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert logs["gan"].item() == 0.0 and logs["disc_factor"].item() == 0.0
    d_loss, d_logs = crit.discriminator_loss(image, out.recon, step=99)
    assert d_loss.item() == 0.0 and d_logs["disc_loss_unweighted"].item() > 0
    assert not crit.disc_active(99) and crit.disc_active(100)
    with torch.no_grad():  # evaluation: no autograd -> adaptive weight 0, no crash
        out, image, last = _fake_output(2)
        total, logs = crit.generator_loss(out, image, step=1000, last_layer=last.weight)
    assert logs["adaptive_weight"].item() == 0.0


def test_discriminator_loss_matches_hinge_and_trains_only_d():
    crit = VQGANLoss(LossConfig(disc_start=0, disc_layers=2, disc_ch=8))
    out, image, last = _fake_output(3)
    loss, _ = crit.discriminator_loss(image, out.recon, step=0)
    want = hinge_d_loss(crit.discriminator(image), crit.discriminator(out.recon))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert last.weight.grad is None  # the reconstruction is detached
    assert all(p.grad is not None for p in crit.discriminator.parameters())
    crit = VQGANLoss(LossConfig(disc_start=0, disc_layers=2, disc_ch=8, disc_loss="vanilla"))
    loss, _ = crit.discriminator_loss(image, out.recon, step=0)
    want = vanilla_d_loss(crit.discriminator(image), crit.discriminator(out.recon))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_perceptual_term_uses_lpips_mean():
    class FakeLPIPS(nn.Module):  # any module with forward(x, y) -> (B,) works
        def forward(self, x, y):
            return (x - y).square().flatten(1).mean(1) * torch.tensor([1.0, 3.0])

    lp = FakeLPIPS()
    crit = VQGANLoss(LossConfig(perceptual_weight=0.5, disc_start=10, disc_layers=2, disc_ch=8), lpips=lp)
    assert crit.perceptual_active
    crit.train()
    assert not lp.training
    out, image, last = _fake_output(4)
    total, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    p = lp(image, out.recon).mean()
    assert logs["perceptual"].item() == pytest.approx(p.item(), rel=1e-6)
    assert total.item() == pytest.approx((out.sgw + out.recon_l1 + 0.5 * p + out.quant + out.cond_recon).item(),
                                         rel=1e-6)
    assert not VQGANLoss(LossConfig(perceptual_weight=0.0), lpips=lp).perceptual_active


def test_with_real_lpips_module():
    from iqvae.models.lpips import LPIPS

    lp = LPIPS("alex", random_init=True)
    crit = VQGANLoss(LossConfig(disc_start=10, disc_layers=2, disc_ch=8), lpips=lp)
    out, image, last = _fake_output(5)
    _, logs = crit.generator_loss(out, image, step=0, last_layer=last.weight)
    assert logs["perceptual"].item() == pytest.approx(lp(image, out.recon).mean().item(), rel=1e-5)


def test_loss_config_validation():
    with pytest.raises(ConfigError, match="disc_weight"):
        from_dict(LossConfig, {"disc_weight": -1.0})
    with pytest.raises(ConfigError, match="disc_loss"):
        from_dict(LossConfig, {"disc_loss": "wgan"})
    with pytest.raises(ConfigError, match="disc_layers"):
        from_dict(LossConfig, {"disc_layers": 0})


def test_patchgan_structure_and_init():
    d = NLayerDiscriminator(3, ndf=64, n_layers=3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the classic 70x70 PatchGAN map
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    big = convs[3].weight  # 256 -> 512 channels, 2M weights
    assert abs(big.mean().item()) < 1e-3 and big.std().item() == pytest.approx(0.02, rel=0.02)
    norms = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(torch.all(m.bias == 0) for m in norms)
    assert torch.cat([m.weight for m in norms]).mean().item() == pytest.approx(1.0, abs=0.01)
    bn = NLayerDiscriminator(3, ndf=8, n_layers=2, norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    with pytest.raises(DataError, match="at least 24x24"):
        d(torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError):
        NLayerDiscriminator(norm="instance")


def test_patchgan_is_local():
    # BatchNorm in eval mode is per-pixel affine, so each logit depends on its receptive field only
    # (GroupNorm and training-mode BatchNorm share statistics over the whole map).
    d = NLayerDiscriminator(3, ndf=8, n_layers=2, norm="batch").eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., 48:, 48:] += 5.0  # change only the bottom-right corner
    dx, dy = d(x), d(y)
    assert torch.equal(dx[..., 0, 0], dy[..., 0, 0])  # top-left patch does not see it
    assert not torch.equal(dx[..., -1, -1], dy[..., -1, -1])


def test_disc_step_decreases_d_loss():
    crit = VQGANLoss(LossConfig(disc_start=0, disc_layers=2, disc_ch=8))
    opt = torch.optim.Adam(crit.discriminator.parameters(), lr=1e-3)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = torch.zeros(4, 3, 32, 32)
    first = None
    for _ in range(20):
        loss, _ = crit.discriminator_loss(real, fake, step=0)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
