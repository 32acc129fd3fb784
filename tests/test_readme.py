"""The README's Python examples run as tests (the pipeline path is pointed at a tiny pipeline built here)."""

import re
from pathlib import Path

import pytest
import torch

from iqvae.data.shapes import ShapesDataset
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.models.tokenizer import IQVAE, IQVAEConfig
from iqvae.pipeline import IQVAEPipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def tiny_pipeline(tmp_path):
    spec = ShapesDataset("train", size=1, resolution=32, modalities=("seg",)).condition_spec("seg")
    tok = IQVAE(IQVAEConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False, embed_dim=8,
                            num_codes=16, cond_num_codes=16), spec)
    from iqvae.data.config import DataConfig

    tok.data_config = DataConfig(resolution=32, cond="seg")
    gpt = GPT(GPTConfig(cond_vocab=16, image_vocab=16, n_cond=64, n_image=64, n_layer=1, n_head=1, n_embd=16))
    return IQVAEPipeline(tok, gpt).save_pretrained(tmp_path / "pipe")


def test_readme_has_examples():
    assert len(_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_example_runs(index, tiny_pipeline):
    code = _blocks()[index].replace('"runs/demo/seg"', repr(str(tiny_pipeline)))
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    for name, check in (("images", lambda v: len(v) == 1 and len(v[0]) == 4),
                        ("loss", lambda v: torch.is_tensor(v) and v.ndim == 0)):
        if name in namespace:
            assert check(namespace[name]), name


# ------------------------------------------------------------------------------ the "Your own data" walkthrough
# The README's commands, run in order on a small generated folder: the same commands with tiny sizes.
TINY = {
    "--preset small": "--preset tiny --set train.steps=2",
    "-n 2000": "-n 120",  # ~6 test items, so the FD floor has two sets
    "-n 8": "-n 2",
}
EVAL_EXTRA = ["--conditions", "3", "--samples", "2", "--predictor-steps", "3", "--recon-items", "4", "--no-progress"]


def _walkthrough() -> list[str]:
    section = README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(block) == 1, "the 'Your own data' section should hold one bash block"
    return [ln for ln in block[0].splitlines() if ln.strip()]


def test_your_own_data_walkthrough_runs(tmp_path, monkeypatch):
    import json
    import shlex

    from iqvae.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IQVAE_CACHE", str(tmp_path / "cache"))
    lines = _walkthrough()
    commands = [shlex.split(ln, comments=True) for ln in lines]
    assert [c[1] for c in commands] == ["data", "data", "train-tokenizer", "encode", "train-transformer", "evaluate",
                                        "sample"]
    for line in lines:
        for old, new in TINY.items():
            line = re.sub(re.escape(old) + r"(?=\s|$)", new, line)
        argv = shlex.split(line, comments=True)
        assert argv[0] == "iqvae"
        argv = argv[1:] + (EVAL_EXTRA if argv[1] == "evaluate" else ["--no-progress"] if argv[1].startswith(
            ("train-", "encode")) else [])
        assert main(argv) == 0, line
    res = json.loads((tmp_path / "runs/mine/stage2/eval-test/metrics.json").read_text())
    m = res["metrics"]
    assert m["fd"]["name"] == "FD-pairs-seg-cnn" and m["fd"]["floor"]["available"]
    c = m["control"]
    assert c["available"] and c["metric"] == "miou" and c["predictor"] == "pairs-seg-cnn"
    assert 0.0 <= c["samples"] <= 1.0 and 0.0 <= c["real"] <= 1.0
    md = (tmp_path / "runs/mine/stage2/eval-test/metrics.md").read_text()
    assert "| FD-pairs-seg-cnn floor (real vs real) |" in md and "control: miou (samples; real oracle" in md
    assert (tmp_path / "mine.png").is_file()
    assert len(list((tmp_path / "cache" / "predictors").glob("pairs-seg-32-*"))) == 1
