"""FID InceptionV3: key set / parameter count of the pytorch-fid file, FID-specific pooling, loading."""

import pytest
import torch
import torch.nn.functional as F

from iqvae.errors import IQVAEError
from iqvae.metrics.fd import metric_name
from iqvae.models.inception import FIDInceptionV3, expected_keys, load_fid_inception

# torchvision's inception_v3 (1000 classes, with AuxLogits) has 27,161,264 parameters; the FID graph drops AuxLogits
# (conv0 128x768 + bn, conv1 768x128x5x5 + bn, fc 768->1000) and has a 1008-way fc.
AUX = 768 * 128 + 2 * 128 + 768 * 128 * 25 + 2 * 768 + 768 * 1000 + 1000
FID_PARAMS = 27_161_264 - AUX + 8 * (2048 + 1)


@pytest.fixture(scope="module")
def model():
    return FIDInceptionV3()


def test_expected_keys_and_parameter_count(model):
    keys = expected_keys()
    # 94 BasicConv2d (5 stem + 3x7 A + 4 B + 4x10 C + 6 D + 2x9 E), 5 tensors each, plus fc weight and bias
    assert len(keys) == 94 * 5 + 2 == 472
    for k in ("Conv2d_1a_3x3.conv.weight", "Conv2d_4a_3x3.bn.running_var", "Mixed_5b.branch5x5_2.conv.weight",
              "Mixed_6a.branch3x3dbl_3.bn.bias", "Mixed_6e.branch7x7dbl_5.conv.weight",
              "Mixed_7a.branch7x7x3_4.bn.weight",
              "Mixed_7c.branch3x3dbl_3b.bn.running_mean", "fc.weight", "fc.bias"):
        assert k in keys, k
    assert not any(k.startswith("AuxLogits") or k.endswith("num_batches_tracked") for k in keys)
    m = model
    assert sum(p.numel() for p in m.parameters()) == FID_PARAMS
    assert m.fc.weight.shape == (1008, 2048)
    assert m.Mixed_7b.branch_pool.conv.weight.shape == (192, 1280, 1, 1)


def _identity_pool_branch(block, c_in, c_out):
    """Make ``block.branch_pool`` pass channels 0..c_out-1 of its (pooled) input through unchanged."""
    bp = block.branch_pool
    with torch.no_grad():
        bp.conv.weight.copy_(torch.eye(c_out, c_in).view(c_out, c_in, 1, 1))
        bp.bn.weight.fill_(1.0)
        bp.bn.bias.zero_()
        bp.bn.running_mean.zero_()
        bp.bn.running_var.fill_(1.0 - bp.bn.eps)


def test_fid_specific_pooling_branches():
    m = FIDInceptionV3(resize_to=None)
    x = torch.rand(1, 192, 9, 9) + 0.5  # positive, so the final ReLU is transparent
    _identity_pool_branch(m.Mixed_5b, 192, 32)
    out = m.Mixed_5b(x)[:, -32:]
    expect = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[:, :32]
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    # TF-style average: a constant map stays constant at the border (zero padding is not counted)
    assert not torch.allclose(out, F.avg_pool2d(x, 3, 1, 1)[:, :32], atol=1e-3)

    x = torch.rand(1, 2048, 5, 5) + 0.5
    _identity_pool_branch(m.Mixed_7c, 2048, 192)
    torch.testing.assert_close(m.Mixed_7c(x)[:, -192:], F.max_pool2d(x, 3, 1, 1)[:, :192], rtol=1e-5, atol=1e-5)
    x = torch.rand(1, 1280, 5, 5) + 0.5
    _identity_pool_branch(m.Mixed_7b, 1280, 192)
    torch.testing.assert_close(m.Mixed_7b(x)[:, -192:],
                               F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[:, :192], rtol=1e-5, atol=1e-5)
    x = torch.rand(1, 768, 5, 5) + 0.5
    _identity_pool_branch(m.Mixed_6b, 768, 192)
    torch.testing.assert_close(m.Mixed_6b(x)[:, -192:],
                               F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[:, :192], rtol=1e-5, atol=1e-5)


def test_forward_at_299_and_resize(model):
    m = model
    x = torch.rand(1, 3, 40, 40) * 2 - 1
    assert m.resize_to == 299
    feat, logits = m(x, return_logits=True)
    assert feat.shape == (1, 2048) and logits.shape == (1, 1008)
    assert (feat >= 0).all()  # average of ReLU outputs
    torch.testing.assert_close(logits, m.fc(feat))
    # the input is resized bilinearly (align_corners=False) first; checked at 80 px to keep the test fast
    m.resize_to = 80
    try:
        small = m(x)
        m.resize_to = None
        up = F.interpolate(x, size=(80, 80), mode="bilinear", align_corners=False)
        torch.testing.assert_close(m(up), small, rtol=1e-4, atol=1e-5)
    finally:
        m.resize_to = 299
    m.train()
    assert not m.training and all(not p.requires_grad for p in m.parameters())


def test_save_load_roundtrip_and_bad_files(tmp_path):
    m = FIDInceptionV3(resize_to=None)
    with torch.no_grad():  # non-trivial BN statistics, so that loading them matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "inception.pth"
    torch.save(m.state_dict(), path)
    loaded = load_fid_inception(path, resize_to=None)
    x = torch.rand(2, 3, 75, 75) * 2 - 1  # the smallest input InceptionV3 accepts
    torch.testing.assert_close(loaded(x), m(x))
    assert not loaded.is_standard_fid
    assert loaded.name.startswith("inception[") and metric_name(loaded) == f"FD-{loaded.name}"
    assert metric_name(m) == "FD-inception(random weights)"

    # a file without BN counters (as old exports are) loads too
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "nocount.pth")
    load_fid_inception(tmp_path / "nocount.pth")

    renamed = dict(state)
    renamed["Mixed_6c.branch7x7_2.conv.weight_renamed"] = renamed.pop("Mixed_6c.branch7x7_2.conv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(IQVAEError, match=r"renamed\.pth.*missing key 'Mixed_6c\.branch7x7_2\.conv\.weight'"):
        load_fid_inception(tmp_path / "renamed.pth")
    extra = dict(state)
    extra["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(IQVAEError, match="unexpected key 'AuxLogits.fc.weight'"):
        load_fid_inception(tmp_path / "extra.pth")
    with pytest.raises(IQVAEError, match="does not exist"):
        load_fid_inception(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(IQVAEError, match="cannot read"):
        load_fid_inception(tmp_path / "junk.pth")


def test_standard_name_only_for_the_published_hash():
    m = FIDInceptionV3()
    m.weights_sha256 = "6726825d" + "0" * 56
    assert m.is_standard_fid and metric_name(m) == "FID" and metric_name(m, kernel=True) == "KID"
    m.weights_sha256 = "deadbeef" + "0" * 56
    assert metric_name(m) == "FD-inception[deadbeef]"
