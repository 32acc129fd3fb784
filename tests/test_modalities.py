"""The condition types (iqvae.modalities): contracts and their errors, the registry, the one renderer (pixel for
pixel what the three renderers before it drew), and a new modality as one file."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from iqvae.data.preview import render_tile
from iqvae.data.record import check_modalities
from iqvae.data.shapes import ShapesWorld
from iqvae.errors import ConfigError, DataError
from iqvae.modalities import MODALITIES, SPATIAL, ConditionSpec, Modality, get_modality, register, unregister
from iqvae.models.tokenizer import IQVAE, IQVAEConfig

RES = 16
SPECS = {
    "seg": ConditionSpec("seg", 5),
    "edge": ConditionSpec("edge", 1),
    "keypoints": ConditionSpec("keypoints", 3),
    "layout": ConditionSpec("layout", 4),
    "text": ConditionSpec("text", 12, length=7, vocab=tuple(["<pad>", "<unk>"] + [f"w{c}" for c in "abcdefghij"])),
    "audio": ConditionSpec("audio", 10, length=20),
}
EXPECT = {  # the item shape each error message names
    "seg": "int64 (16, 16) class ids", "edge": "float32 (1, 16, 16)", "keypoints": "float32 (3, 16, 16)",
    "layout": "float32 (4, 16, 16)", "text": "int64 (7,) token ids", "audio": "float32 (10, 20) log-mel",
}
BATCH_EXPECT = {
    "seg": "int64 (B, 16, 16)", "edge": "float32 (B, 1, 16, 16)", "keypoints": "float32 (B, 3, 16, 16)",
    "layout": "float32 (B, 4, 16, 16)", "text": "int64 (B, 7)", "audio": "float32 (B, 10, 20)",
}


def item(m: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spec = SPECS[m]
    if m == "seg":
        return torch.randint(0, spec.channels, (RES, RES), generator=g)
    if m == "edge":
        return (torch.rand(1, RES, RES, generator=g) > 0.7).float()
    if m == "keypoints":
        return torch.rand(spec.channels, RES, RES, generator=g)
    if m == "layout":
        return (torch.rand(spec.channels, RES, RES, generator=g) > 0.6).float()
    if m == "text":
        t = torch.randint(1, spec.channels, (spec.length,), generator=g)
        t[5:] = 0
        return t
    return torch.randn(spec.channels, spec.length, generator=g)


# ------------------------------------------------------------------------------------------------ contracts
def test_registry_lists_the_six_and_refuses_others():
    assert MODALITIES == ("seg", "edge", "keypoints", "layout", "text", "audio")
    assert SPATIAL == ("seg", "edge", "keypoints", "layout")
    assert [get_modality(m).kind for m in MODALITIES] == ["spatial"] * 4 + ["sequence"] * 2
    with pytest.raises(DataError, match=r"unknown condition modality 'depth'; expected one of: seg, edge, keypoints, "
                                        r"layout, text, audio"):
        get_modality("depth")
    with pytest.raises(DataError, match="unknown condition modality 'depth'"):
        ConditionSpec("depth", 1).check(torch.zeros(1, 4, 4), 4)


@pytest.mark.parametrize("m", MODALITIES)
def test_item_and_batch_checks_accept_the_contract(m):
    spec, x = SPECS[m], item(m)
    spec.check(x, RES)
    get_modality(m).check_batch(spec, torch.stack([x, item(m, 1)]), RES, 2)
    get_modality(m).check_batch(spec, x[None], RES)


@pytest.mark.parametrize("m", MODALITIES)
def test_item_check_refuses_wrong_shape_and_dtype_naming_modality_and_shape(m):
    spec, x = SPECS[m], item(m)
    wrong_dtype = x.float() if x.dtype == torch.int64 else x.long()
    for bad in (wrong_dtype, x[None], x.reshape(-1)[:-1]):
        with pytest.raises(DataError) as e:
            spec.check(bad, RES, "my condition")
        assert f"my condition for modality '{m}' must be {EXPECT[m]}; got" in str(e.value)


@pytest.mark.parametrize("m", MODALITIES)
def test_batch_check_refuses_naming_modality_and_batched_shape(m):
    spec, x = SPECS[m], item(m)
    mod = get_modality(m)
    with pytest.raises(DataError) as e:
        mod.check_batch(spec, x, RES)  # no batch dimension
    assert f"condition for modality '{m}' must be {BATCH_EXPECT[m]}; got" in str(e.value)
    with pytest.raises(DataError, match="must be a tensor"):
        mod.check_batch(spec, x.numpy(), RES)
    with pytest.raises(DataError, match=r"\(3, "):
        mod.check_batch(spec, torch.stack([x, x]), RES, 3)


@pytest.mark.parametrize("m,bad,msg", [
    ("seg", lambda x: x + 10, r"condition for modality 'seg' has ids in \[10, 14\]; expected ids in \[0, 4\]"),
    ("text", lambda x: -x, r"condition for modality 'text' has ids in"),
    ("edge", lambda x: x * 2, r"condition for modality 'edge' has values in \[0, 2\]; expected \[0, 1\]"),
    ("layout", lambda x: x - 1, r"'layout' has values in \[-1, 0\]; expected \[0, 1\]"),
    ("keypoints", lambda x: x * float("nan"), r"'keypoints' contains NaN or infinite values"),
    ("audio", lambda x: x / 0, r"'audio' contains NaN or infinite values"),
])
def test_value_checks(m, bad, msg):
    x = bad(item(m))[None]
    with pytest.raises(DataError, match=msg):
        get_modality(m).check_batch(SPECS[m], x, RES)


def test_item_id_range_is_checked():
    with pytest.raises(DataError, match=r"condition for modality 'seg' has ids in \[5, 9\]; expected \[0, 4\]"):
        SPECS["seg"].check(item("seg") + 5, RES)
    get_modality("audio").check_batch(SPECS["audio"], item("audio")[None] * 100, RES)  # log-mel: any finite value


def test_spec_checks():
    with pytest.raises(ConfigError, match="condition 'seg' needs more channels/classes, got 1"):
        get_modality("seg").check_spec(ConditionSpec("seg", 1))
    with pytest.raises(ConfigError, match="condition 'audio' needs a positive length, got None"):
        get_modality("audio").check_spec(ConditionSpec("audio", 8))
    get_modality("edge").check_spec(ConditionSpec("edge", 1))


# ------------------------------------------------------------------------------------- the old renderers, by hand
def _palette(n):  # label_palette as it was in condition_io
    cols = [(0, 0, 0)]
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.3 * ((i // 14) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8)


_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def _up(rgb, tile):
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    return img.resize((tile, tile), Image.NEAREST) if img.size != (tile, tile) else img


def old_render_tile(m, x, spec, tile):
    """data/preview.render_tile before the modalities (the text tile is checked by its words, not its font)."""
    if m == "seg":
        n = spec.channels
        return _up(_palette(max(max(n, 1), int(x.max()) + 1))[x.numpy()], tile)
    if m == "edge":
        return _up(np.repeat((x[0].numpy() * 255).clip(0, 255)[..., None], 3, axis=2), tile)
    if m in ("keypoints", "layout"):
        maps = x.float().numpy()
        if m == "keypoints":
            cols = _palette(maps.shape[0] + 1)[1:].astype(np.float64)
            rgb = cols[maps.argmax(axis=0)] * maps.max(axis=0)[..., None]
        else:
            cols = _palette(maps.shape[0]).astype(np.float64)
            count = maps.sum(axis=0)[..., None]
            rgb = np.einsum("chw,cd->hwd", maps, cols) / np.maximum(count, 1)
            rgb[count[..., 0] > 0] = np.maximum(rgb[count[..., 0] > 0], 40)
        return _up(np.round(rgb), tile)
    a = x.float().numpy()
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    a = np.clip(a[::-1], 0.0, 1.0) * (len(_CMAP) - 1)
    lo = np.floor(a).astype(int).clip(0, len(_CMAP) - 2)
    t = (a - lo)[..., None]
    rgb = np.round(_CMAP[lo] * (1 - t) + _CMAP[lo + 1] * t).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").resize((tile, tile), Image.BILINEAR)


def old_sample_preview(m, x, spec, res):
    """sample_commands.condition_preview before the modalities."""
    if m == "seg":
        return Image.fromarray(_palette(max(spec.channels, int(x.max()) + 1))[x.numpy()])
    if m in ("edge", "keypoints", "layout"):
        x = x.float()
        if m == "layout":
            labels = (x * torch.arange(x.shape[0], dtype=torch.float32)[:, None, None]).amax(0).long()
            return Image.fromarray(_palette(max(x.shape[0], int(labels.max()) + 1))[labels.numpy()])
        return Image.fromarray((x.amax(0).clamp(0, 1).numpy() * 255).astype(np.uint8)).convert("RGB")
    if m == "audio":
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
        return Image.fromarray((x.flip(0).numpy() * 255).astype(np.uint8)).convert("RGB").resize((res, res))
    return Image.new("RGB", (res, res), "white")


def old_web_preview(m, x, spec):
    """web.condition_preview before the modalities (enlarged 12x: 16 px -> 192 px)."""
    if m == "seg":
        img = Image.fromarray(_palette(max(spec.channels, int(x.max()) + 1))[x.numpy()])
    elif m == "edge":
        img = Image.fromarray((x[0].clamp(0, 1) * 255).round().byte().numpy(), "L").convert("RGB")
    else:
        return None
    return img.resize((img.width * 12, img.height * 12), Image.NEAREST)


def _same(a, b):
    assert a.size == b.size and a.mode == b.mode
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("m", MODALITIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_one_renderer_draws_what_the_three_old_renderers_drew(m, seed):
    from iqvae import web
    from iqvae.sample_commands import condition_preview

    spec, x = SPECS[m], item(m, seed)
    if m == "text":  # words on a white tile: compare with the tile of the decoded words
        from iqvae.modalities.palette import text_tile

        words = " ".join(spec.vocab[i] for i in x.tolist() if i)
        _same(render_tile(m, x, spec, 128), text_tile(words, 128))
    else:
        _same(render_tile(m, x, spec, 128), old_render_tile(m, x, spec, 128))
    # `iqvae sample` grids use the same renderer (seg and edge looked so before; the others had plainer tiles)
    _same(condition_preview(x, spec, RES), render_tile(m, x, spec, RES))
    if m in ("seg", "edge"):
        _same(condition_preview(x, spec, RES), old_sample_preview(m, x, spec, RES))

    class Pipe:  # what web.condition_preview reads of a pipeline
        cond_spec, resolution = spec, RES

    new, old = web.condition_preview(x, Pipe()), old_web_preview(m, x, spec)
    if old is None:
        assert new is None
    else:
        _same(new, old)


def test_renderer_on_the_shapes_world():
    world = ShapesWorld(32)
    s = world.sample("test", 3)
    for m in MODALITIES:
        spec = world.condition_spec(m)
        x = s.cond[m]
        spec.check(x, 32)
        if m != "text":
            _same(render_tile(m, x, spec, 128), old_render_tile(m, x, spec, 128))
        assert get_modality(m).render(x, spec, 32).size == (32, 32)


# ----------------------------------------------------------------------------------- a new modality is one file
class Depth(Modality):
    """A toy condition type: a depth map, float32 (1, H, W) in [0, 1]; everything else is the default."""

    name = "depth"
    title = "Depth"

    def item_shape(self, spec, resolution):
        return (1, resolution, resolution)

    def render(self, x, spec, tile):
        grey = (x[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB").resize((tile, tile), Image.NEAREST)


@pytest.fixture
def depth():
    register(Depth())
    yield ConditionSpec("depth", 1)
    unregister("depth")


def test_a_new_modality_is_one_class_and_a_register_call(depth):
    torch.manual_seed(0)
    x = torch.rand(1, RES, RES)
    depth.check(x, RES)
    with pytest.raises(DataError, match=r"condition for modality 'depth' must be float32 \(1, 16, 16\)"):
        depth.check(x[0], RES)
    assert check_modalities(["depth"]) == ["depth"]
    assert depth.kind == "spatial"
    assert np.asarray(render_tile("depth", x, depth, 32)).shape == (32, 32, 3)
    cfg = IQVAEConfig(resolution=RES, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, embed_dim=8, num_codes=16,
                      sgw_projections=8, cond_cell_head="spatial")
    model = IQVAE(cfg, depth)
    assert model.cond_encoder.conv_in.in_channels == 1 and model.cond_cell_head is not None
    with torch.no_grad():
        out = model(torch.rand(2, 3, RES, RES) * 2 - 1, torch.rand(2, 1, RES, RES))
    assert out.cond_out.shape == (2, 1, RES, RES) and out.cond_recon.item() > 0 and out.cond_cell.item() > 0
    with pytest.raises(DataError, match=r"condition for modality 'depth' has values in"):
        model.encode(torch.zeros(2, 3, RES, RES), torch.full((2, 1, RES, RES), 2.0))
    assert IQVAE.from_config_dict(model.config_dict()).cond_spec == depth


# ------------------------------------------------------------------------------------------------- file reading
def test_files_are_read_by_the_modality(tmp_path):
    import _dataset_fixtures as fx
    from safetensors.torch import save_file

    from iqvae.condition_io import load_condition
    from iqvae.data.datasets.suburmp import FRAMES, N_MELS, audio_features

    wav = fx.write_wav(tmp_path / "a.wav", fx.tone(1000, 16000), 16000)
    spec = ConditionSpec("audio", N_MELS, FRAMES)
    torch.testing.assert_close(load_condition(wav, spec, 32), audio_features(wav)[0], rtol=0, atol=0)
    with pytest.raises(DataError, match=r"log-mel of '.*a\.wav' for modality 'audio' must be float32 \(10, 20\)"):
        load_condition(wav, SPECS["audio"], 32)  # another dataset's audio parameters
    with pytest.raises(DataError, match="this model is conditioned on 'seg', not on audio"):
        load_condition(wav, SPECS["seg"], RES)
    (tmp_path / "c.txt").write_text("wa wb zz")
    assert load_condition(tmp_path / "c.txt", SPECS["text"], RES).tolist() == [2, 3, 1, 0, 0, 0, 0]
    with pytest.raises(DataError, match="this model is conditioned on 'edge', not on text"):
        load_condition(tmp_path / "c.txt", SPECS["edge"], RES)
    save_file({"cond": item("layout")}, str(tmp_path / "l.safetensors"))
    assert torch.equal(load_condition(tmp_path / "l.safetensors", SPECS["layout"], RES), item("layout"))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "e.png")
    assert load_condition(tmp_path / "e.png", SPECS["edge"], RES).shape == (1, RES, RES)
    with pytest.raises(DataError, match="a keypoints condition cannot be given as an image"):
        load_condition(tmp_path / "e.png", SPECS["keypoints"], RES)
