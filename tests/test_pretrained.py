"""Each model loads itself: ``IQVAE.from_pretrained`` / ``GPT.from_pretrained`` read the checkpoint folders that
training and ``IQVAEPipeline.save_pretrained`` write (the on-disk layout of earlier runs included), with the data
config and the codes metadata as declared attributes."""

from __future__ import annotations

import json

import pytest
import torch

from iqvae.checkpoint import load_checkpoint, save_checkpoint
from iqvae.config import to_dict
from iqvae.data.config import DataConfig
from iqvae.data.shapes import ShapesDataset
from iqvae.errors import CheckpointError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.models.tokenizer import IQVAE, IQVAEConfig
from iqvae.pipeline import IQVAEPipeline


def _tokenizer() -> IQVAE:
    torch.manual_seed(0)
    spec = ShapesDataset("train", size=1, resolution=16, modalities=("seg",)).condition_spec("seg")
    return IQVAE(IQVAEConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, embed_dim=4,
                             num_codes=8, cond_num_codes=8), spec)


def _gpt() -> GPT:
    torch.manual_seed(1)
    return GPT(GPTConfig(cond_vocab=8, image_vocab=8, n_cond=64, n_image=64, n_layer=1, n_head=1, n_embd=8))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_declared_attributes_default_to_none():
    assert _tokenizer().data_config is None and _gpt().codes_meta is None


def test_round_trip_from_a_checkpoint_run_and_pipeline_folder(tmp_path):
    tok, gpt = _tokenizer(), _gpt()
    tok.data_config = DataConfig(resolution=16, cond="seg", test_size=4)
    gpt.codes_meta = {"tokenizer": str(tmp_path / "run" / "tokenizer"), "n_image": 64}
    tok.save_pretrained(tmp_path / "run" / "tokenizer", meta={"steps": 3})
    gpt.save_pretrained(tmp_path / "run" / "transformer")
    for path in (tmp_path / "run" / "tokenizer", tmp_path / "run"):  # the folder itself or a folder holding it
        back = IQVAE.from_pretrained(path)
        assert _same_weights(back, tok) and not back.training and back.data_config == tok.data_config
        g = GPT.from_pretrained(path.parent / "transformer" if path.name == "tokenizer" else path)
        assert _same_weights(g, gpt) and not g.training and g.codes_meta == gpt.codes_meta
    assert load_checkpoint(tmp_path / "run" / "tokenizer").meta == {"steps": 3}
    # a transformer run folder finds its tokenizer through the codes metadata
    pipe = IQVAEPipeline.from_pretrained(tmp_path / "run")
    assert _same_weights(pipe.tokenizer, tok) and _same_weights(pipe.transformer, gpt)
    again = IQVAEPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "pipe"))
    assert again.tokenizer.data_config == tok.data_config and again.transformer.codes_meta == gpt.codes_meta


def test_reads_the_layout_that_earlier_runs_wrote(tmp_path):
    """The JSON layout of a final tokenizer / transformer checkpoint as the trainers have always written it."""
    tok, gpt = _tokenizer(), _gpt()
    data = DataConfig(resolution=16, cond="seg")
    save_checkpoint(tmp_path / "tokenizer", kind="iqvae-tokenizer", config={"model": to_dict(tok.config),
                    "data": to_dict(data)}, model_state=tok.state_dict(), meta={"steps": 1})
    save_checkpoint(tmp_path / "transformer", kind="iqvae-transformer", config={"model": to_dict(gpt.config),
                    "codes": {"n_image": 64, "dir": "/somewhere"}}, model_state=gpt.state_dict())
    assert IQVAE.from_pretrained(tmp_path).data_config == data
    assert GPT.from_pretrained(tmp_path).codes_meta == {"n_image": 64, "dir": "/somewhere"}
    # and what save_pretrained writes is that layout
    tok.data_config = data
    tok.save_pretrained(tmp_path / "again")
    header = json.loads((tmp_path / "again" / "config.json").read_text())
    assert header["kind"] == "iqvae-tokenizer" and header["config"] == {"model": to_dict(tok.config),
                                                                        "data": to_dict(data)}


def test_wrong_folders_are_clear_errors(tmp_path):
    _gpt().save_pretrained(tmp_path / "transformer")
    with pytest.raises(CheckpointError, match="expected 'iqvae-tokenizer'"):
        IQVAE.from_pretrained(tmp_path / "transformer")
    other = GPT(GPTConfig(cond_vocab=8, image_vocab=8, n_cond=64, n_image=64, n_layer=2, n_head=1, n_embd=8))
    save_checkpoint(tmp_path / "bad", kind="iqvae-transformer", config={"model": to_dict(_gpt().config)},
                    model_state=other.state_dict())
    with pytest.raises(CheckpointError, match="do not fit its config"):
        GPT.from_pretrained(tmp_path / "bad")
