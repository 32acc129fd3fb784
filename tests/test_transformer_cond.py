"""``tokenizer.model.transformer_cond='input'`` (ours): the transformer's condition prefix is the caption's own token
ids, not the quantized caption latent; D_x still decodes with the condition codes.

Oracle: the ids a dataset holds.  ``iqvae encode`` (encode_dataset / write_codes) must write exactly them, with the
caption vocabulary as ``cond_vocab``; the pipeline must feed exactly them to the transformer at sampling and decode
with the condition codes ``encode_condition`` makes (the same as ``transformer_cond='codes'`` would)."""

import json

import pytest
import torch

from iqvae.codes import encode_dataset, load_codes, write_codes
from iqvae.data.record import collate
from iqvae.data.shapes import ShapesDataset
from iqvae.errors import CheckpointError, ConfigError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.models.tokenizer import IQVAE, IQVAEConfig
from iqvae.pipeline import IQVAEPipeline

RES = 16

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts():
    return ShapesDataset("train", size=5, resolution=RES, modalities=("text", "seg"))


def _tok(spec, **kw) -> IQVAE:
    torch.manual_seed(0)
    cfg = IQVAEConfig(resolution=RES, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, embed_dim=8, num_codes=16,
                      cond_num_codes=12, text_width=16, text_layers=1, text_heads=2, **kw)
    return IQVAE(cfg, spec).eval()


def test_codes_hold_the_caption_ids(texts, tmp_path):
    spec = texts.condition_spec("text")
    tok = _tok(spec, transformer_cond="input")
    enc = encode_dataset(tok, texts, "text", batch_size=2, progress=False)
    ids = torch.stack([texts[i].cond["text"] for i in range(len(texts))])
    assert torch.equal(enc["cond"].long(), ids)
    assert int(ids.max()) > 1  # real words, not padding only
    write_codes(tmp_path, tok, tmp_path / "tok", {"train": enc}, {})
    meta = json.loads((tmp_path / "codes.json").read_text())
    assert meta["cond_vocab"] == len(spec.vocab) == spec.channels and meta["n_cond"] == spec.length
    assert meta["transformer_cond"] == "input"
    assert torch.equal(load_codes(tmp_path, "train").cond, ids)
    # the default writes the condition codes instead (the paper's C)
    codes = _tok(spec)
    enc_codes = encode_dataset(codes, texts, "text", batch_size=2, progress=False)
    b = collate([texts[i] for i in range(len(texts))])
    with torch.no_grad():
        want = codes.encode(b.image, b.cond["text"]).cond_indices.reshape(len(texts), -1)
    assert torch.equal(enc_codes["cond"].long(), want) and enc_codes["cond"].shape[1] == (RES // 2) ** 2


def test_pipeline_feeds_the_ids_and_decodes_with_the_codes(texts):
    spec = texts.condition_spec("text")
    tok = _tok(spec, transformer_cond="input")
    torch.manual_seed(1)
    n = RES // 2
    gpt = GPT(GPTConfig(cond_vocab=spec.channels, image_vocab=16, n_cond=spec.length, n_image=n * n, n_layer=1,
                        n_head=1, n_embd=16))
    pipe = IQVAEPipeline(tok, gpt)
    cond = torch.stack([texts[i].cond["text"] for i in range(3)])
    flat, grid = pipe.condition_tokens(cond)
    assert torch.equal(flat, cond)
    with torch.no_grad():
        assert torch.equal(grid, tok.encode_condition(cond)[0]) and grid.shape == (3, n, n)
    seen = {}
    real_decode = tok.decode_indices

    def spy(img_idx, cond_idx=None, cond=None):
        seen["cond_idx"] = cond_idx
        return real_decode(img_idx, cond_idx, cond)

    tok.decode_indices = spy
    out = pipe(cond[:1], num_images=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.shape == (1, 2, 3, RES, RES)
    assert torch.equal(seen["cond_idx"], grid[:1].repeat_interleave(2, 0))
    # a transformer trained on the condition codes does not fit this tokenizer
    wrong = GPT(GPTConfig(cond_vocab=12, image_vocab=16, n_cond=n * n, n_image=n * n, n_layer=1, n_head=1, n_embd=16))
    with pytest.raises(CheckpointError, match="condition vocabulary"):
        IQVAEPipeline(tok, wrong)


def test_input_is_refused_for_a_map_condition(texts):
    with pytest.raises(ConfigError, match="transformer_cond=input"):
        _tok(texts.condition_spec("seg"), transformer_cond="input")
    with pytest.raises(ConfigError, match="transformer_cond"):
        _tok(texts.condition_spec("text"), transformer_cond="words")
