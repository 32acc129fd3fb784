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
