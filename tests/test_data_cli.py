"""``iqvae data preview`` through iqvae.cli.main: the PNG's size and content, and clear errors for bad options."""

import os

import numpy as np
import pytest
from PIL import Image

import iqvae.cli as cli
from iqvae.data.preview import HEADER, PAD, tile_size
from iqvae.modalities.palette import label_colours
from iqvae.data.shapes import ShapesDataset, tensor_to_image

ALL = "seg,edge,keypoints,layout,text,audio"


@pytest.fixture(autouse=True)
def _only_data_commands(monkeypatch):
    # Test the data command on its own: other command modules are written concurrently and may not import yet.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["iqvae.data.commands"])


def _tile(grid: np.ndarray, row: int, col: int, tile: int) -> np.ndarray:
    y, x = HEADER + PAD + row * (tile + PAD), PAD + col * (tile + PAD)
    return grid[y : y + tile, x : x + tile]


@pytest.mark.parametrize("res", [32, 64])
def test_preview_writes_expected_grid(tmp_path, capsys, res):
    out = tmp_path / f"preview{res}.png"
    rc = cli.main(["data", "preview", "--world", "shapes", "--cond", ALL, "-n", "3", "--start", "2",
                   "--split", "val", "--resolution", str(res), "--out", str(out)])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    tile = tile_size(res)
    assert tile == 128
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (HEADER + PAD + 3 * (tile + PAD), PAD + 7 * (tile + PAD), 3)
    # The image column is the sample image upscaled (nearest), the seg column its class colours.
    ds = ShapesDataset("val", 5, res, ("seg",))
    scale = tile // res
    for row, idx in enumerate((2, 3, 4)):
        s = ds[idx]
        img = _tile(grid, row, 0, tile)[::scale, ::scale]
        np.testing.assert_array_equal(img, tensor_to_image(s.image))
        seg = _tile(grid, row, 1, tile)[::scale, ::scale]
        np.testing.assert_array_equal(seg, label_colours(7)[s.cond["seg"].numpy()])
        # The text tile is not blank (caption printed), the audio tile is not constant.
        assert (_tile(grid, row, 5, tile) < 128).any()
        assert _tile(grid, row, 6, tile).std() > 10


def test_preview_subset_of_conditions(tmp_path):
    out = tmp_path / "p.png"
    assert cli.main(["data", "preview", "--cond", "edge", "-n", "2", "--resolution", "16", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert (w, h) == (PAD + 2 * (128 + PAD), HEADER + PAD + 2 * (128 + PAD))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--cond", "seg,depth"], "--cond: unknown modality 'depth'"),
        (["--cond", ","], "--cond: no modality"),
        (["-n", "-1"], "-n/--num must be a positive"),
        (["--start", "-4"], "--start must be a non-negative"),
        (["--resolution", "8"], "--resolution"),
        (["--out", "/nonexistent-dir-iqvae/x.png"], "--out '/nonexistent-dir-iqvae/x.png'"),
    ],
)
def test_preview_errors_name_the_option(tmp_path, capsys, args, needle):
    base = {"--out": str(tmp_path / "x.png")}
    argv = ["data", "preview"] + args + ([] if "--out" in args else ["--out", base["--out"]])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("iqvae data: error: ") and needle in err
    assert "Traceback" not in err


def test_preview_unwritable_file(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        target = ro / "x.png"
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced; /proc refuses new files
            if not os.path.isdir("/proc/self"):
                pytest.skip("cannot make an unwritable folder here")
            target = "/proc/iqvae-preview-test.png"
        assert cli.main(["data", "preview", "-n", "1", "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "cannot be written" in err
    finally:
        os.chmod(ro, 0o700)


def test_preview_out_is_a_folder(tmp_path, capsys):
    assert cli.main(["data", "preview", "-n", "1", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_data_without_subcommand_prints_help(capsys):
    assert cli.main(["data"]) == 0
    assert "preview" in capsys.readouterr().out
