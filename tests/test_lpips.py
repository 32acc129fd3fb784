"""LPIPS: key layout of the standard files, loading, and values against a plain-torch re-computation."""

import pytest
import torch
import torch.nn.functional as F

from iqvae.errors import IQVAEError
from iqvae.models.lpips import LPIPS, build_lpips

# conv layer indices inside torchvision's vgg16().features / alexnet().features
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
ALEX_CONVS = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}  # index -> (stride, padding)


def reference_lpips(state, lins, net, x, y):
    """LPIPS v0.1 from the raw weights with functional ops (independent of the module's code)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(z):
        z = (z - shift) / scale
        out = []
        if net == "vgg":
            # blocks of 2, 2, 3, 3, 3 convs; tap after each block, 2x2 max-pool between blocks
            it = iter(VGG_CONVS)
            for bi, n in enumerate((2, 2, 3, 3, 3)):
                if bi:
                    z = F.max_pool2d(z, 2, 2)
                for _ in range(n):
                    i = next(it)
                    z = F.relu(F.conv2d(z, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
                out.append(z)
        else:
            for i, (s, p) in ALEX_CONVS.items():
                if i in (3, 6):
                    z = F.max_pool2d(z, 3, 2)
                z = F.relu(F.conv2d(z, state[f"features.{i}.weight"], state[f"features.{i}.bias"], stride=s, padding=p))
                out.append(z)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((a - b) ** 2, lins[f"lin{k}.model.1.weight"]).mean(dim=(2, 3))
    return total.flatten()


def _files(tmp_path, net, model):
    trunk = {f"features.{k}": v.clone() for k, v in model.net.features.state_dict().items()}
    trunk["classifier.0.weight"] = torch.randn(7, 5)  # torchvision files carry classifier keys: ignored
    trunk["classifier.0.bias"] = torch.randn(7)
    lins = {f"lin{i}.model.1.weight": lin.model[1].weight.clone() for i, lin in enumerate(model.lins)}
    bb, ln = tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_lin.pth"
    torch.save(trunk, bb)
    torch.save(lins, ln)
    return bb, ln, trunk, lins


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """One random VGG LPIPS and its files in the standard layouts (built once: VGG16 is 14.7M parameters)."""
    rand = LPIPS("vgg", random_init=True, seed=3)
    return (rand, *_files(tmp_path_factory.mktemp("vgg"), "vgg", rand))


def test_key_layout_matches_torchvision_and_lpips(vgg):
    vgg = vgg[0]
    keys = list(vgg.net.features.state_dict())
    assert keys == [f"features.{i}.{p}"[9:] for i in VGG_CONVS for p in ("weight", "bias")]
    assert [vgg.lins[i].model[1].weight.shape[1] for i in range(5)] == [64, 128, 256, 512, 512]
    alex = LPIPS("alex", random_init=True)
    assert list(alex.net.features.state_dict()) == [f"{i}.{p}" for i in ALEX_CONVS for p in ("weight", "bias")]
    assert [alex.lins[i].model[1].weight.shape[1] for i in range(5)] == [64, 192, 384, 256, 256]


@pytest.mark.parametrize("net,size", [("vgg", 16), ("alex", 64)])
def test_loads_standard_files_and_matches_reference(tmp_path, vgg, net, size):
    if net == "vgg":
        rand, bb, ln, trunk, lins = vgg
    else:
        rand = LPIPS(net, random_init=True, seed=3)
        bb, ln, trunk, lins = _files(tmp_path, net, rand)
    model = LPIPS(net, bb, ln)
    assert model.is_calibrated and model.label == f"LPIPS-{net}"
    assert not rand.is_calibrated and rand.label == f"LPIPS-{net}(random weights)"
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = torch.rand(2, 3, size, size) * 2 - 1
    d = model(x, y)
    assert d.shape == (2,)
    ref = reference_lpips(trunk, lins, net, x, y)
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d, rand(x, y))
    # properties: identity, symmetry, positivity with non-negative lin weights
    assert torch.all(model(x, x) == 0)
    torch.testing.assert_close(model(y, x), d, rtol=1e-5, atol=1e-7)
    assert torch.all(d > 0)
    # a tiny perturbation gives a tiny distance (not only the exact-equality shortcut)
    assert torch.all(model(x, x + 1e-4 * torch.randn_like(x)) < 1e-3 * d)


def test_bad_files_fail_clearly(tmp_path, vgg):
    rand, bb, ln, trunk, lins = vgg
    renamed = dict(trunk)
    renamed["features.99.weight"] = renamed.pop("features.5.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(renamed, bad)
    with pytest.raises(IQVAEError, match=r"renamed\.pth.*missing key 'features\.5\.weight'"):
        LPIPS("vgg", bad, ln)
    extra = dict(lins)
    extra["lin5.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(IQVAEError, match="unexpected key 'lin5.model.1.weight'"):
        LPIPS("vgg", bb, tmp_path / "extra.pth")
    wrong = dict(lins)
    wrong["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(IQVAEError, match="lin0.model.1.weight.*shape"):
        LPIPS("vgg", bb, tmp_path / "wrong.pth")
    with pytest.raises(IQVAEError, match="does not exist"):
        LPIPS("vgg", tmp_path / "nope.pth", ln)
    with pytest.raises(IQVAEError, match="random_init"):
        LPIPS("vgg", None, None)
    with pytest.raises(IQVAEError, match="alex"):
        LPIPS("resnet", random_init=True)
    # AlexNet weights do not fit the VGG trunk
    alex_bb, _, _, _ = _files(tmp_path, "alex", LPIPS("alex", random_init=True))
    with pytest.raises(IQVAEError, match="alex_backbone.pth"):
        LPIPS("vgg", alex_bb, ln)


def test_build_lpips(vgg):
    assert build_lpips(None, None) is None
    _, bb, ln, _, _ = vgg
    with pytest.raises(IQVAEError, match="lin"):
        build_lpips(bb, None)
    m = build_lpips(bb, ln, "vgg")
    assert m.is_calibrated and m.label == "LPIPS-vgg"


def test_frozen_but_differentiable_with_finite_gradients(vgg):
    model = vgg[0]
    model.train()
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    # a constant very dark image: many feature vectors are exactly zero after ReLU
    y = torch.full((1, 3, 16, 16), -1.0)
    d = model(x, y).sum() + model(y.clone().requires_grad_(True), y * 0.999).sum()
    d.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_random_stand_in_is_reproducible():
    a, b = LPIPS("alex", random_init=True, seed=1), LPIPS("alex", random_init=True, seed=1)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
