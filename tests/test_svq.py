"""The sVQ baseline at sampling time: its condition tokens are what the transformer was trained on.

sVQ's shared encoder sees the image and the condition.  When the condition latent is computed from the paired
image (the sVQ paper's training; ``model.svq_cond_image=paired``), the token codes the transformer learns from carry
the image, and at sampling time, with no image, the condition tokens are ones it never saw: the 16 px ablation's sVQ
row drew the same flat grey image for every condition.  With ``svq_cond_image=grey`` (the default) the condition latent
is computed with a mid-grey image in place of the image, in training and at sampling, so the tokens the pipeline
produces for a condition are exactly those of the codes on disk.
"""

import pytest
import torch

from iqvae.codes import encode_dataset, flatten_tokens
from iqvae.data.record import collate
from iqvae.data.shapes import ShapesDataset
from iqvae.errors import ConfigError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.models.tokenizer import IQVAE, IQVAEConfig
from iqvae.pipeline import IQVAEPipeline

RES = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset("train", size=6, resolution=RES, modalities=("seg",))


def _svq(spec, **kw) -> IQVAE:
    torch.manual_seed(0)
    cfg = IQVAEConfig(variant="svq", resolution=RES, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False,
                      embed_dim=8, num_codes=16, cond_num_codes=16, **kw)
    return IQVAE(cfg, spec).eval()


def _batch(ds, idx):
    b = collate([ds[i] for i in idx])
    return b.image, b.cond["seg"]


def test_condition_tokens_are_a_function_of_the_condition(shapes):
    """The training path (encode with the real image) gives the sampling path's condition tokens, whatever the image."""
    model = _svq(shapes.condition_spec("seg"))
    img, cond = _batch(shapes, range(4))
    noise = torch.rand(img.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        enc = model.encode(img, cond)
        enc_noise = model.encode(noise, cond)
        at_sampling, zq = model.encode_condition(cond)
        other = model.encode(img, cond.roll(1, 0)).cond_indices
    assert torch.equal(enc.cond_indices, at_sampling) and torch.equal(enc_noise.cond_indices, at_sampling)
    torch.testing.assert_close(enc.zq_cond, zq, rtol=0, atol=0)
    assert not torch.equal(other, at_sampling)  # ... and of the condition: another condition, other tokens
    # the image latent still sees the image and the condition (the shared encoder of sVQ)
    assert not torch.equal(enc.z_img, enc_noise.z_img)
    assert not torch.equal(enc.z_img, model.encode(img, cond.roll(1, 0)).z_img)


def test_paired_condition_latent_depends_on_the_image(shapes):
    """The paper's literal training (``svq_cond_image=paired``): the condition tokens change with the image, so the
    oracle above can fail; a reference image passed at sampling gives that image's tokens."""
    model = _svq(shapes.condition_spec("seg"), svq_cond_image="paired")
    img, cond = _batch(shapes, range(4))
    with torch.no_grad():
        enc = model.encode(img, cond)
        assert not torch.equal(enc.cond_indices, model.encode_condition(cond)[0])
        assert torch.equal(enc.cond_indices, model.encode_condition(cond, image=img)[0])
    with pytest.raises(ConfigError, match="svq_cond_image"):
        IQVAEConfig(variant="svq", svq_cond_image="reference").validate()


def test_pipeline_samples_use_the_trained_condition_tokens(shapes):
    """An sVQ pipeline: the condition tokens it feeds the transformer are the codes the transformer was trained on
    (encode_dataset, i.e. ``iqvae encode``), and its images depend on the condition."""
    spec = shapes.condition_spec("seg")
    tok = _svq(spec)
    codes = encode_dataset(tok, shapes, "seg", batch_size=4, progress=False)
    torch.manual_seed(1)
    n = RES // 2
    gpt = GPT(GPTConfig(cond_vocab=16, image_vocab=16, n_cond=n * n, n_image=n * n, n_layer=1, n_head=1, n_embd=16))
    pipe = IQVAEPipeline(tok, gpt)
    _, cond = _batch(shapes, range(len(shapes)))
    flat, grid = pipe.condition_tokens(cond)
    assert torch.equal(flat, codes["cond"].long())
    # the same image tokens decoded with two conditions' tokens give two images
    img_idx = codes["image"][:1].long().reshape(1, n, n)
    with torch.no_grad():
        a = tok.decode_indices(img_idx, grid[:1].clone())
        b = tok.decode_indices(img_idx, grid[1:2].clone())
    assert (a - b).abs().max() > 1e-3
    # and a sample drawn with the same seed differs between conditions
    sa = pipe(cond[0], num_images=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    sb = pipe(cond[1], num_images=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert (sa - sb).abs().max() > 1e-3
    assert torch.equal(flatten_tokens(grid), flat)
