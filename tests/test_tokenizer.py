"""IQ-VAE tokenizer: variants, every condition modality, losses, validation, config round trip."""

import json

import pytest
import torch
import torch.nn.functional as F

from iqvae.config import from_dict, to_dict
from iqvae.modalities import ConditionSpec
from iqvae.errors import CheckpointError, ConfigError, DataError, IQVAEError
from iqvae.losses import random_projections, sliced_gromov_wasserstein_reference
from iqvae.models.tokenizer import IQVAE, IQVAEConfig


pytestmark = pytest.mark.usefixtures("one_thread")


RES = 16
SPECS = {
    "seg": ConditionSpec("seg", 5),
    "edge": ConditionSpec("edge", 1),
    "keypoints": ConditionSpec("keypoints", 3),
    "layout": ConditionSpec("layout", 4),
    "text": ConditionSpec("text", 12, length=7, vocab=tuple(["<pad>", "<unk>"] + [f"w{i}" for i in range(10)])),
    "audio": ConditionSpec("audio", 10, length=20),
}


def tiny(variant="iq-vr", **kw):
    base = {"variant": variant, "resolution": RES, "ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn": True,
            "embed_dim": 8, "num_codes": 16, "text_width": 16, "text_layers": 1, "text_heads": 2, "audio_ch": 8,
            "audio_ch_mult": (1, 2), "sgw_projections": 8}
    base.update(kw)
    return IQVAEConfig(**base)


def make_cond(spec, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = spec.modality
    if m == "seg":
        return torch.randint(0, spec.channels, (b, RES, RES), generator=g)
    if m == "edge":
        return (torch.rand(b, 1, RES, RES, generator=g) > 0.8).float()
    if m in ("keypoints", "layout"):
        x = torch.rand(b, spec.channels, RES, RES, generator=g)
        return (x > 0.5).float() if m == "layout" else x
    if m == "text":
        t = torch.randint(1, spec.channels, (b, spec.length), generator=g)
        t[:, 4:] = 0  # padding
        return t
    return torch.randn(b, spec.channels, spec.length, generator=g)


def image(b=2, seed=1):
    return torch.rand(b, 3, RES, RES, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("modality", list(SPECS))
def test_every_modality_round_trips_shapes(modality):
    spec = SPECS[modality]
    model = IQVAE(tiny("iq-vr"), spec)
    cond, img = make_cond(spec), image()
    out = model(img, cond)
    enc = out.encoding
    assert model.tokens_shape == (8, 8)
    assert out.recon.shape == img.shape
    assert enc.img_indices.shape == enc.cond_indices.shape == (2, 8, 8)  # same n for image and condition
    assert enc.z_img.shape == enc.z_cond.shape == enc.zq_cond.shape == (2, 8, 8, 8)
    pred = model.condition_prediction(out.cond_out)
    assert pred.shape == cond.shape and pred.dtype == cond.dtype
    for t in (out.recon_l1, out.quant, out.sgw, out.cond_recon):
        assert t.dim() == 0 and torch.isfinite(t)
    assert out.sgw > 0 and out.cond_recon > 0
    assert set(out.stats) == {"img_perplexity", "img_usage", "cond_perplexity", "cond_usage"}
    model.eval()
    idx, zq = model.encode_condition(cond)
    assert idx.shape == (2, 8, 8) and zq.shape == (2, 8, 8, 8)
    assert model.decode_indices(enc.img_indices, idx).shape == img.shape
    # every loss part reaches the parameters it should train
    model.train()
    out = model(img, cond)
    (out.recon_l1 + out.quant + out.sgw + out.cond_recon).backward()
    assert model.cond_encoder.parameters().__next__().grad is not None
    assert model.cond_decoder.parameters().__next__().grad is not None


def _losses_by_hand(modality, cond_out, cond):
    if modality == "seg":
        logp = F.log_softmax(cond_out, dim=1)
        return -logp.gather(1, cond[:, None]).mean()
    if modality in ("edge", "layout"):
        p = torch.sigmoid(cond_out)
        return -(cond * p.log() + (1 - cond) * (1 - p).log()).mean()
    if modality in ("keypoints", "audio"):
        return (cond_out - cond).square().mean()
    logp = F.log_softmax(cond_out, dim=1).gather(1, cond[:, None])[:, 0]  # (B, T)
    keep = cond != 0
    return -(logp * keep).sum() / keep.sum()


@pytest.mark.parametrize("modality", list(SPECS))
def test_condition_reconstruction_losses(modality):
    spec = SPECS[modality]
    model = IQVAE(tiny("iq-none"), spec)
    cond = make_cond(spec)
    out = model(image(), cond)
    want = _losses_by_hand(modality, out.cond_out.double(), cond.double() if cond.is_floating_point() else cond)
    assert out.cond_recon.item() == pytest.approx(want.item(), rel=1e-4)
    lib = {"seg": lambda o, c: F.cross_entropy(o, c), "edge": F.binary_cross_entropy_with_logits,
           "layout": F.binary_cross_entropy_with_logits, "keypoints": F.mse_loss, "audio": F.mse_loss,
           "text": lambda o, c: F.cross_entropy(o, c, ignore_index=0)}[modality]
    assert out.cond_recon.item() == pytest.approx(lib(out.cond_out, cond).item(), rel=1e-5)


def test_text_loss_ignores_padding_and_survives_all_padding():
    model = IQVAE(tiny("iq-none"), SPECS["text"])
    cond = make_cond(SPECS["text"])
    logits = torch.randn(2, 12, 7)
    edited = logits.clone()
    edited[:, :, 4:] += torch.randn(2, 12, 3) * 5  # padded positions
    assert model.condition_loss(logits, cond).item() == pytest.approx(model.condition_loss(edited, cond).item())
    assert model.condition_loss(logits, torch.zeros_like(cond)).item() == 0.0


def test_vqgan_pair_decoder_ignores_condition():
    spec = SPECS["seg"]
    model = IQVAE(tiny("vqgan-pair"), spec).eval()
    img = image()
    a, b = make_cond(spec, seed=0), make_cond(spec, seed=5)
    with torch.no_grad():
        ra, rb = model(img, a), model(img, b)
        assert torch.equal(ra.encoding.img_indices, rb.encoding.img_indices)
        assert torch.equal(ra.recon, rb.recon)
        assert not torch.equal(ra.encoding.cond_indices, rb.encoding.cond_indices)
        idx = ra.encoding.img_indices
        assert torch.equal(model.decode_indices(idx, ra.encoding.cond_indices),
                           model.decode_indices(idx, rb.encoding.cond_indices))
        torch.testing.assert_close(model.decode_indices(idx), ra.recon, atol=1e-5, rtol=1e-5)
    assert model.decoder.cond_channels == 0
    assert ra.sgw.item() == 0.0


@pytest.mark.parametrize("variant", ["iq-none", "iq-vr", "svq"])
def test_joint_variants_decoder_uses_condition(variant):
    spec = SPECS["seg"]
    model = IQVAE(tiny(variant), spec).eval()
    img = image()
    with torch.no_grad():
        enc = model.encode(img, make_cond(spec, seed=0))
        other = model.encode(img, make_cond(spec, seed=5)).cond_indices
        assert not torch.equal(enc.cond_indices, other)
        r1 = model.decode_indices(enc.img_indices, enc.cond_indices)
        r2 = model.decode_indices(enc.img_indices, other)
        assert not torch.allclose(r1, r2)
        # decoding tokens == decoding the quantized features of the encoding (codebook lookup oracle)
        torch.testing.assert_close(r1, model.decode(enc.zq_img, enc.zq_cond), atol=1e-5, rtol=1e-5)


def test_svq_stop_gradient_into_condition_latent():
    spec = SPECS["edge"]
    model = IQVAE(tiny("svq"), spec)
    assert model.cond_encoder is None and model.encoder.in_channels == 4 and model.encoder.out_channels == 16
    out = model(image(), make_cond(spec))
    enc = out.encoding
    g_img = torch.autograd.grad(out.recon_l1, [enc.z_cond, enc.z_img], retain_graph=True, allow_unused=True)
    assert g_img[0] is None or torch.count_nonzero(g_img[0]) == 0
    assert g_img[1] is not None and g_img[1].abs().sum() > 0
    g_cond = torch.autograd.grad(out.cond_recon, enc.z_cond, retain_graph=True)[0]
    assert g_cond.abs().sum() > 0
    # the image loss still trains the shared encoder through the image latent
    g_w = torch.autograd.grad(out.recon_l1, model.encoder.conv_in.weight)[0]
    assert g_w.abs().sum() > 0


def test_svq_condition_without_image_and_restrictions():
    spec = SPECS["seg"]
    model = IQVAE(tiny("svq"), spec).eval()
    img, cond = image(), make_cond(spec)
    with torch.no_grad():
        enc = model.encode(img, cond)
        idx_ref, _ = model.encode_condition(cond, image=img)
        idx_zero, _ = model.encode_condition(cond)
        enc_zero = model.encode(torch.zeros_like(img), cond)
    assert torch.equal(idx_ref, enc.cond_indices)
    assert torch.equal(idx_zero, enc_zero.cond_indices)
    for m in ("text", "audio"):
        with pytest.raises(ConfigError, match="svq"):
            IQVAE(tiny("svq"), SPECS[m])
    with pytest.raises(ConfigError, match="decoder_cond"):
        IQVAE(tiny("svq", decoder_cond="continuous"), spec)


@pytest.mark.parametrize("sgw_on", ["pre", "post"])
def test_iq_vr_sgw_equals_direct_call(sgw_on):
    spec = SPECS["keypoints"]
    model = IQVAE(tiny("iq-vr", sgw_on=sgw_on), spec)
    proj = random_projections(8, 8, generator=torch.Generator().manual_seed(3))
    out = model(image(), make_cond(spec), sgw_projections=proj)
    enc = out.encoding
    zc, zx = (enc.z_cond, enc.z_img) if sgw_on == "pre" else (enc.zq_cond, enc.zq_img)
    flat = lambda z: z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])
    want = sliced_gromov_wasserstein_reference(flat(zc).double(), flat(zx).double(), projections=proj.double())
    assert out.sgw.item() == pytest.approx(want.item(), rel=1e-4)
    # a seeded generator gives reproducible projections
    s1 = model(image(), make_cond(spec), generator=torch.Generator().manual_seed(7)).sgw
    s2 = model(image(), make_cond(spec), generator=torch.Generator().manual_seed(7)).sgw
    assert s1.item() == s2.item()
    # the regulariser trains both encoders
    out = model(image(), make_cond(spec), sgw_projections=proj)
    gx, gc = torch.autograd.grad(out.sgw, [model.encoder.conv_in.weight, model.cond_encoder.conv_in.weight])
    assert gx.abs().sum() > 0 and gc.abs().sum() > 0


def test_iq_none_has_no_regulariser():
    spec = SPECS["seg"]
    out = IQVAE(tiny("iq-none"), spec)(image(), make_cond(spec))
    assert out.sgw.item() == 0.0 and not out.sgw.requires_grad and out.sgw.grad_fn is None


def test_colour_head_loss_by_hand_and_trains_the_image_encoder_only():
    spec = SPECS["seg"]
    model = IQVAE(tiny("iq-vr", colour_head=True), spec)
    x, c = image(), make_cond(spec)
    out = model(x, c)
    zq = out.encoding.zq_img
    # by hand: every latent cell's mean pixel colour (RES / grid = 2 px patches), predicted by a 1x1 conv of zq alone
    patches = x.reshape(2, 3, model.grid[0], 2, model.grid[1], 2).mean(dim=(3, 5))
    w, b = model.colour_head.weight[:, :, 0, 0], model.colour_head.bias
    pred = torch.einsum("od,bdhw->bohw", w, zq) + b[None, :, None, None]
    assert out.colour.item() == pytest.approx((pred - patches).abs().mean().item(), rel=1e-5)
    gx = torch.autograd.grad(out.colour, model.encoder.conv_in.weight, retain_graph=True)[0]
    assert gx.abs().sum() > 0  # straight-through: the head shapes what the image encoder puts into the codes
    gc = torch.autograd.grad(out.colour, model.cond_encoder.conv_in.weight, allow_unused=True)[0]
    assert gc is None or gc.abs().sum() == 0  # the condition branch is untouched
    # off by default: no head, no parameters, a constant zero
    plain = IQVAE(tiny("iq-vr"), spec)
    assert plain.colour_head is None and not any("colour_head" in k for k in plain.state_dict())
    z = plain(x, c).colour
    assert z.item() == 0.0 and z.grad_fn is None


def test_colour_head_with_condition_features_by_hand():
    spec = SPECS["seg"]
    model = IQVAE(tiny("iq-vr", colour_head=True, colour_head_cond=True), spec)
    x, c = image(), make_cond(spec)
    out = model(x, c)
    enc = out.encoding
    patches = x.reshape(2, 3, model.grid[0], 2, model.grid[1], 2).mean(dim=(3, 5))
    w, b = model.colour_head.weight[:, :, 0, 0], model.colour_head.bias
    inp = torch.cat([enc.zq_img, enc.zq_cond], dim=1)  # what D_x sees: the quantized condition features
    pred = torch.einsum("od,bdhw->bohw", w, inp) + b[None, :, None, None]
    assert out.colour.item() == pytest.approx((pred - patches).abs().mean().item(), rel=1e-5)
    gc = torch.autograd.grad(out.colour, model.cond_encoder.conv_in.weight)[0]
    assert gc.abs().sum() > 0
    for bad in (dict(colour_head_cond=True), dict(variant="vqgan-pair", colour_head=True, colour_head_cond=True)):
        with pytest.raises(ConfigError, match="colour_head_cond"):
            IQVAE(tiny(**{"variant": "iq-vr", **bad}), spec)


@pytest.mark.parametrize("modality", ["seg", "edge", "keypoints"])
def test_cond_cell_head_loss_by_hand_and_trains_the_condition_encoder_only(modality):
    spec = SPECS[modality]
    model = IQVAE(tiny("iq-vr", cond_cell_head=True), spec)
    x, c = image(), make_cond(spec)
    out = model(x, c)
    zq = out.encoding.zq_cond
    h, w = model.grid
    # by hand: the condition as network input (seg: one-hot), averaged over each cell's 2 x 2 pixel patch
    inp = torch.nn.functional.one_hot(c, spec.channels).permute(0, 3, 1, 2).float() if modality == "seg" else c
    cells = inp.reshape(2, inp.shape[1], h, 2, w, 2).mean(dim=(3, 5))
    wt, b = model.cond_cell_head.weight[:, :, 0, 0], model.cond_cell_head.bias
    pred = torch.einsum("od,bdhw->bohw", wt, zq) + b[None, :, None, None]
    if modality == "seg":  # soft-target cross-entropy: - sum_k hist_k log softmax(pred)_k, mean over cells
        expect = -(cells * pred.log_softmax(1)).sum(1).mean()
    elif modality == "edge":  # binary cross-entropy with the pooled map, written out
        expect = (torch.nn.functional.softplus(pred) - cells * pred).mean()
    else:
        expect = ((pred - cells) ** 2).mean()
    assert out.cond_cell.item() == pytest.approx(expect.item(), rel=1e-5)
    gc = torch.autograd.grad(out.cond_cell, model.cond_encoder.conv_in.weight, retain_graph=True)[0]
    assert gc.abs().sum() > 0  # straight-through: the head shapes what the condition encoder puts into its codes
    gx = torch.autograd.grad(out.cond_cell, model.encoder.conv_in.weight, allow_unused=True)[0]
    assert gx is None or gx.abs().sum() == 0  # the image branch is untouched


def test_cond_cell_head_off_by_default_and_refused_for_non_spatial_conditions():
    spec = SPECS["seg"]
    plain = IQVAE(tiny("iq-vr"), spec)
    assert plain.cond_cell_head is None and not any("cond_cell" in k for k in plain.state_dict())
    z = plain(image(), make_cond(spec)).cond_cell
    assert z.item() == 0.0 and z.grad_fn is None
    for modality in ("text", "audio"):
        with pytest.raises(ConfigError, match="cond_cell_head.*spatial"):
            IQVAE(tiny("iq-vr", cond_cell_head=True), SPECS[modality])
        # 'spatial': off for the sequence conditions, so one preset serves every modality
        m = IQVAE(tiny("iq-vr", cond_cell_head="spatial"), SPECS[modality])
        assert m.cond_cell_head is None and m(image(), make_cond(SPECS[modality])).cond_cell.item() == 0.0
    for modality in ("seg", "edge", "keypoints", "layout"):  # ... and on for the spatial ones, like true
        on = IQVAE(tiny("iq-vr", cond_cell_head="spatial"), SPECS[modality])
        assert on.cond_cell_head is not None and on(image(), make_cond(SPECS[modality])).cond_cell.item() > 0
    with pytest.raises(ConfigError, match="cond_cell_head"):
        from_dict(IQVAEConfig, {"cond_cell_head": "yes"})


@pytest.mark.parametrize("modality", ["edge", "text"])
def test_cond_cell_colour_target_by_hand(modality):
    """cond_cell_target='colour': squared error of the head against each cell's mean image colour; 'both' adds the
    condition term; the colour target works for text (D_x reads its latent cells in place), 'both' does not."""
    spec = SPECS[modality]
    model = IQVAE(tiny("iq-vr", cond_cell_head=True, cond_cell_target="colour"), spec)
    x, c = image(), make_cond(spec)
    out = model(x, c)
    zq = out.encoding.zq_cond
    h, w = model.grid
    cells = x.reshape(2, 3, h, 2, w, 2).mean(dim=(3, 5))
    wt, b = model.cond_cell_head.weight[:, :, 0, 0], model.cond_cell_head.bias
    assert wt.shape[0] == 3
    pred = torch.einsum("od,bdhw->bohw", wt, zq) + b[None, :, None, None]
    assert out.cond_cell.item() == pytest.approx(((pred - cells) ** 2).mean().item(), rel=1e-5)
    gx = torch.autograd.grad(out.cond_cell, model.encoder.conv_in.weight, allow_unused=True)[0]
    assert gx is None or gx.abs().sum() == 0  # the target is the image, but only the condition branch learns
    if modality == "text":
        with pytest.raises(ConfigError, match="cond_cell_target='both'.*spatial"):
            IQVAE(tiny("iq-vr", cond_cell_head=True, cond_cell_target="both"), spec)
        return
    both = IQVAE(tiny("iq-vr", cond_cell_head=True, cond_cell_target="both"), spec)
    out = both(x, c)
    wt, b = both.cond_cell_head.weight[:, :, 0, 0], both.cond_cell_head.bias
    pred = torch.einsum("od,bdhw->bohw", wt, out.encoding.zq_cond) + b[None, :, None, None]
    edge_cells = c.reshape(2, 1, h, 2, w, 2).mean(dim=(3, 5))
    expect = ((torch.nn.functional.softplus(pred[:, :1]) - edge_cells * pred[:, :1]).mean()
              + ((pred[:, 1:] - cells) ** 2).mean())
    assert out.cond_cell.item() == pytest.approx(expect.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="cond_cell_target"):
        from_dict(IQVAEConfig, {"cond_cell_target": "image"})


def test_quant_is_sum_of_both_quantizers_and_shared_codebook():
    spec = SPECS["seg"]
    model = IQVAE(tiny("iq-vr", cond_num_codes=32), spec)
    out = model(image(), make_cond(spec))
    assert out.quant.item() == pytest.approx((out.encoding.q_loss_img + out.encoding.q_loss_cond).item())
    assert model.image_codebook.shape == (16, 8) and model.cond_codebook.shape == (32, 8)
    assert model.num_image_codes == 16 and model.num_cond_codes == 32
    shared = IQVAE(tiny("iq-vr", shared_codebook=True), spec)
    assert shared.cond_codebook is shared.image_codebook and shared.num_cond_codes == 16
    assert not any("cond_quantize" in k for k in shared.state_dict())
    with pytest.raises(ConfigError, match="shared_codebook"):
        IQVAE(tiny("vqgan-pair", shared_codebook=True), spec)
    with pytest.raises(ConfigError, match="cond_num_codes"):
        IQVAE(tiny("iq-vr", shared_codebook=True, cond_num_codes=32), spec)


def test_residual_quantizer_tokens():
    spec = SPECS["edge"]
    model = IQVAE(tiny("iq-vr", quantizer="rq", rq_depth=3), spec).eval()
    assert model.tokens_shape == (8, 8, 3)
    with torch.no_grad():
        enc = model.encode(image(), make_cond(spec))
        assert enc.img_indices.shape == enc.cond_indices.shape == (2, 8, 8, 3)
        torch.testing.assert_close(model.decode_indices(enc.img_indices, enc.cond_indices),
                                   model.decode(enc.zq_img, enc.zq_cond), atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match=r"\(B, 8, 8, 3\)"):
        model.decode_indices(enc.img_indices[..., 0], enc.cond_indices)
    with pytest.raises(ConfigError, match="l2_norm_codes"):
        IQVAE(tiny(quantizer="rq", l2_norm_codes=True), spec)


def test_continuous_decoder_condition():
    spec = SPECS["layout"]
    model = IQVAE(tiny("iq-none", decoder_cond="continuous"), spec).eval()
    img, cond = image(), make_cond(spec)
    with torch.no_grad():
        out = model(img, cond)
        enc = out.encoding
        torch.testing.assert_close(out.recon, model.decode(enc.zq_img, enc.z_cond))
        torch.testing.assert_close(model.decode_indices(enc.img_indices, cond=cond), out.recon, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="raw condition"):
        model.decode_indices(enc.img_indices, enc.cond_indices)


def test_encode_condition_matches_encode():
    spec = SPECS["text"]
    model = IQVAE(tiny("iq-vr"), spec).eval()
    cond = make_cond(spec)
    with torch.no_grad():
        idx, zq = model.encode_condition(cond)
        enc = model.encode(image(), cond)
    assert torch.equal(idx, enc.cond_indices)
    torch.testing.assert_close(zq, enc.zq_cond)


@pytest.mark.parametrize(
    "modality,bad,pattern",
    [
        ("seg", lambda c: c[:, None].clone(), r"seg.*\(2, 16, 16\)"),
        ("seg", lambda c: c.float(), r"int64 \(2, 16, 16\)"),
        ("seg", lambda c: c + 3, r"\[0, 4\]"),
        ("edge", lambda c: c * 2, r"edge.*\[0, 1\]"),
        ("keypoints", lambda c: c[:, :2].clone(), r"keypoints.*\(2, 3, 16, 16\)"),
        ("layout", lambda c: c.double(), r"float32 \(2, 4, 16, 16\)"),
        ("text", lambda c: c[:, :5].clone(), r"text.*\(2, 7\)"),
        ("text", lambda c: c + 20, r"\[0, 11\]"),
        ("audio", lambda c: c.transpose(1, 2).contiguous(), r"audio.*\(2, 10, 20\)"),
        ("audio", lambda c: c * float("nan"), r"NaN"),
        ("seg", lambda c: c[:1].clone(), r"\(2, 16, 16\)"),  # batch mismatch with the image
    ],
)
def test_bad_condition_raises_with_expected_shape(modality, bad, pattern):
    spec = SPECS[modality]
    model = IQVAE(tiny("iq-none"), spec)
    with pytest.raises(DataError, match=pattern):
        model(image(), bad(make_cond(spec)))


def test_bad_image_and_indices_raise():
    spec = SPECS["seg"]
    model = IQVAE(tiny("iq-none"), spec)
    with pytest.raises(DataError, match=r"\(B, 3, 16, 16\)"):
        model(image()[:, :1], make_cond(spec))
    idx = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(DataError, match=r"\[0, 15\]"):
        model.decode_indices(idx + 16, idx)
    with pytest.raises(DataError, match="cond_indices"):
        model.decode_indices(idx)


@pytest.mark.parametrize(
    "override,pattern",
    [
        ({"resolution": 17}, "resolution"),
        ({"variant": "iq-kl"}, "variant"),
        ({"num_codes": 1}, "num_codes"),
        ({"text_width": 10, "text_heads": 3}, "text_width"),
        ({"sgw_on": "mid"}, "sgw_on"),
        ({"vqgan-pair": True}, "unknown option"),
        ({"variant": "vqgan-pair", "cond_decoder": False}, "cond_decoder"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_config_validation(override, pattern):
    d = to_dict(tiny())
    d.update(override)
    with pytest.raises(ConfigError, match=pattern):
        from_dict(IQVAEConfig, d)


@pytest.mark.parametrize("modality,variant", [("text", "iq-vr"), ("seg", "svq"), ("audio", "vqgan-pair")])
def test_config_dict_round_trip_reproduces_outputs(modality, variant):
    spec = SPECS[modality]
    model = IQVAE(tiny(variant), spec).eval()
    d = json.loads(json.dumps(to_dict(model.config)))  # what a checkpoint stores
    assert d["cond_spec"] == spec.to_dict()
    clone = IQVAE.from_config_dict(d).eval()
    assert clone.cond_spec == spec and clone.config == model.config
    clone.load_state_dict(model.state_dict())
    img, cond = image(), make_cond(spec)
    gen = lambda: torch.Generator().manual_seed(0)
    with torch.no_grad():
        a, b = model(img, cond, generator=gen()), clone(img, cond, generator=gen())
    assert torch.equal(a.recon, b.recon) and torch.equal(a.cond_out, b.cond_out)
    assert torch.equal(a.encoding.img_indices, b.encoding.img_indices) and a.sgw.item() == b.sgw.item()


def test_state_dict_from_other_variant_or_modality_raises():
    spec = SPECS["seg"]
    vr = IQVAE(tiny("iq-vr"), spec)
    for other in (IQVAE(tiny("vqgan-pair"), spec), IQVAE(tiny("svq"), spec), IQVAE(tiny("iq-vr"), SPECS["edge"])):
        with pytest.raises(CheckpointError, match="variant"):
            other.load_state_dict(vr.state_dict())
    assert isinstance(CheckpointError("x"), IQVAEError)
    with pytest.raises(ConfigError, match="cond_spec"):
        IQVAE.from_config_dict({k: v for k, v in to_dict(tiny()).items() if k != "cond_spec"})
    with pytest.raises(ConfigError, match="differs"):
        IQVAE(vr.config, SPECS["edge"])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    spec = SPECS["seg"]
    model = IQVAE(tiny("iq-vr", attn=False), spec)
    img = image(4)
    yy, xx = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
    cond = torch.stack([((xx // 4 + yy // 4 + k) % 5) for k in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        out = model(img, cond)
        loss = out.recon_l1 + out.quant + 0.1 * out.sgw + out.cond_recon
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("cond", ["seg", "edge"])
def test_reconstruction_report_has_the_code_purity_measures_of_a_direct_computation(cond):
    """Condition code class purity against the condition's class map (seg) or the scene's segmentation (edge)."""
    from iqvae.data.record import collate
    from iqvae.data.shapes import ShapesDataset
    from iqvae.metrics.recon import cond_code_class_purity
    from iqvae.metrics.shapes import code_colour_purity
    from iqvae.metrics.tokenizer_report import reconstruction_metrics

    ds = ShapesDataset("val", 12, RES, tuple(dict.fromkeys((cond, "seg"))))
    model = IQVAE(tiny("iq-vr"), ds.condition_spec(cond)).eval()
    report = reconstruction_metrics(model, ds, cond, batch_size=5)
    batch = collate([ds[i] for i in range(12)])
    with torch.no_grad():
        enc = model.encode(batch.image, batch.cond[cond])
    assert report["cond_code_class_purity"] == pytest.approx(
        cond_code_class_purity(enc.cond_indices, batch.cond["seg"])["cond_code_class_purity"])
    assert report["code_colour_purity"] == pytest.approx(
        code_colour_purity(enc.img_indices, batch.meta, RES)["code_colour_purity"])


def test_reconstruction_report_scene_scores_are_those_of_the_reconstructions_and_1_for_a_perfect_one():
    """recon_scene_*: scene_scores of the reconstructions (a direct computation); a tokenizer whose reconstruction
    is the input image itself scores 1.0 (true images of the world score 1), one that returns grey scores 0."""
    import dataclasses

    from iqvae.data.record import collate
    from iqvae.data.shapes import ShapesDataset
    from iqvae.metrics.scene import scene_scores
    from iqvae.metrics.tokenizer_report import reconstruction_metrics

    ds = ShapesDataset("val", 12, 32, ("text", "seg"))
    model = IQVAE(tiny("iq-vr", resolution=32), ds.condition_spec("text")).eval()
    report = reconstruction_metrics(model, ds, "text", batch_size=5)
    batch = collate([ds[i] for i in range(12)])
    with torch.no_grad():
        rec = model(batch.image, batch.cond["text"]).recon.clamp(-1, 1)
    direct = scene_scores(rec, batch.meta)
    for k in ("scene_accuracy", "scene_precision", "scene_recall"):
        assert report[f"recon_{k}"] == pytest.approx(direct[k])
    forward = model.forward
    for fake, want in ((lambda img: img, 1.0), (torch.zeros_like, 0.0)):
        model.forward = lambda img, cond, fake=fake: dataclasses.replace(forward(img, cond), recon=fake(img))
        report = reconstruction_metrics(model, ds, "text", batch_size=5)
        assert report["recon_scene_accuracy"] == want and report["recon_scene_recall"] == want


@pytest.mark.parametrize("cond_attn, attn", [(True, False), (False, True), (None, False), (None, True)])
def test_cond_attn_sets_attention_of_the_condition_nets_only(cond_attn, attn):
    """cond_attn (null: as attn) decides attention in the conv condition encoder / decoder, and nothing else: the
    condition nets are exactly those of a model whose `attn` is cond_attn, the image nets those of `attn`."""
    from iqvae.models.autoencoder import AttnBlock

    want = attn if cond_attn is None else cond_attn
    model = IQVAE(tiny(resolution=32, attn=attn, cond_attn=cond_attn), SPECS["edge"])
    ref_cond = IQVAE(tiny(resolution=32, attn=want), SPECS["edge"])
    ref_img = IQVAE(tiny(resolution=32, attn=attn), SPECS["edge"])
    keys = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    for part, ref in (("cond_encoder", ref_cond), ("cond_decoder", ref_cond), ("encoder", ref_img),
                      ("decoder", ref_img)):
        assert keys(getattr(model, part)) == keys(getattr(ref, part)), part
    assert any(isinstance(x, AttnBlock) for x in model.cond_encoder.modules()) == want
    # a round trip through the checkpoint config keeps it
    assert IQVAE.from_config_dict(model.config_dict()).config.cond_attn == cond_attn


def test_cond_context_levels_act_on_the_condition_encoder_only_and_are_checked():
    from iqvae.models.autoencoder import ContextBranch

    model = IQVAE(tiny(resolution=32, cond_context_levels=2), SPECS["edge"])
    assert sum(isinstance(m, ContextBranch) for m in model.modules()) == 1
    assert isinstance(model.cond_encoder.context, ContextBranch) and len(model.cond_encoder.context.down) == 2
    assert IQVAE.from_config_dict(model.config_dict()).config.cond_context_levels == 2
    plain = IQVAE(tiny(resolution=32), SPECS["edge"])
    assert not any(isinstance(m, ContextBranch) for m in plain.modules())
    with pytest.raises(ConfigError, match="cond_context_levels"):
        tiny(resolution=32, cond_context_levels=5).validate()  # a 16 x 16 grid halves 4 times at most
    with pytest.raises(ConfigError, match="cond_context_levels"):
        tiny(resolution=32, cond_context_levels=-1).validate()
    tiny(resolution=32, cond_context_levels=4).validate()
    for modality in ("text", "audio"):  # no conv condition encoder of a spatial map to extend
        with pytest.raises(ConfigError, match="cond_context_levels.*spatial"):
            IQVAE(tiny(resolution=32, cond_context_levels=1), SPECS[modality])
    # audio's condition encoder keeps its own options (audio_ch, audio_ch_mult) through the shared build path
    audio = IQVAE(tiny(resolution=32, audio_ch=12, audio_ch_mult=(1, 2, 2)), SPECS["audio"])
    assert audio.cond_encoder.conv_in.out_channels == audio.config.audio_ch != audio.config.ch
    assert len(audio.cond_encoder.levels) == len(audio.config.audio_ch_mult)


@pytest.mark.parametrize("modality", ["edge", "text"])
def test_cond_cell_colour_bins_target_by_brute_force(modality):
    """cond_cell_target='colour_bins': soft-target cross-entropy of the head (64 logits) against each cell's
    histogram of pixel colours over 4 x 4 x 4 RGB bins, the histogram counted pixel by pixel here."""
    from iqvae.models.tokenizer import colour_bin_histogram

    spec = SPECS[modality]
    model = IQVAE(tiny("iq-vr", cond_cell_head=True, cond_cell_target="colour_bins"), spec)
    x, c = image(), make_cond(spec)
    x[0, :, 0, 0] = torch.tensor([-1.0, 1.0, 0.0])  # the bin edges: -1 -> bin 0, 1 -> bin 3, 0 -> bin 2
    out = model(x, c)
    h, w = model.grid
    hist = torch.zeros(2, 64, h, w)
    for b in range(2):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                r, g, bl = (min(int((float(v) + 1) * 2), 3) for v in x[b, :, i, j])
                hist[b, (r * 4 + g) * 4 + bl, i // 2, j // 2] += 0.25
    assert torch.allclose(colour_bin_histogram(x, (h, w)), hist, atol=1e-6)
    assert hist[0, (0 * 4 + 3) * 4 + 2, 0, 0] >= 0.25
    wt, bias = model.cond_cell_head.weight[:, :, 0, 0], model.cond_cell_head.bias
    assert wt.shape[0] == 64
    pred = torch.einsum("od,bdhw->bohw", wt, out.encoding.zq_cond) + bias[None, :, None, None]
    assert out.cond_cell.item() == pytest.approx(-(hist * pred.log_softmax(1)).sum(1).mean().item(), rel=1e-5)
    gx = torch.autograd.grad(out.cond_cell, model.encoder.conv_in.weight, allow_unused=True)[0]
    assert gx is None or gx.abs().sum() == 0  # only the condition branch learns from it
