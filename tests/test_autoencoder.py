"""Conv encoder/decoder and the sequence-condition networks (iqvae.models.autoencoder)."""

import pytest
import torch

from iqvae.errors import DataError, IQVAEError
from iqvae.models.autoencoder import AttnBlock, Decoder, Encoder, ResnetBlock, TextDecoder, TextEncoder, num_groups


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("res,ch_mult,grid", [(32, (1, 2), 16), (32, (1, 2, 2), 8), (256, (1, 1, 2, 2, 4), 16)])
def test_encoder_decoder_shapes(res, ch_mult, grid):
    enc = Encoder(3, 6, ch=8, ch_mult=ch_mult, num_res_blocks=1, attn=True)
    dec = Decoder(3, 6, ch=8, ch_mult=ch_mult, num_res_blocks=1, attn=True)
    x = torch.randn(1, 3, res, res)
    z = enc(x)
    assert z.shape == (1, 6, grid, grid)
    assert enc.downsample_factor == res // grid
    assert dec(z).shape == (1, 3, res, res)


def test_num_groups_divides_and_matches_taming_at_scale():
    for c in (1, 3, 8, 12, 32, 48, 64, 96, 128, 256, 512):
        g = num_groups(c)
        assert c % g == 0 and 1 <= g <= 32
    assert num_groups(128) == 32 and num_groups(512) == 32 and num_groups(32) == 8


def test_attention_block_matches_explicit_softmax():
    blk = AttnBlock(8)
    x = torch.randn(2, 8, 3, 5)
    qkv = blk.qkv(blk.norm(x)).reshape(2, 3, 8, 15)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, C, N)
    att = torch.softmax(q.transpose(1, 2) @ k / 8 ** 0.5, dim=-1)  # (B, N, N)
    out = (v @ att.transpose(1, 2)).reshape(2, 8, 3, 5)
    torch.testing.assert_close(blk(x), x + blk.proj(out), atol=1e-5, rtol=1e-5)


def test_resnet_block_skip_projection():
    blk = ResnetBlock(4, 8)
    assert blk(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
    same = ResnetBlock(8, 8)
    torch.nn.init.zeros_(same.conv2.weight)
    torch.nn.init.zeros_(same.conv2.bias)
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(same(x), x)  # residual branch off -> identity


def test_decoder_condition_input_is_used_and_checked():
    dec = Decoder(3, 4, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, cond_channels=5)
    z = torch.randn(2, 4, 4, 4)
    c1, c2 = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    assert not torch.allclose(dec(z, c1), dec(z, c2))
    # concatenation at the input: equal to a cond-free decoder with 4 + 5 latent channels fed [z, c]
    plain = Decoder(3, 9, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False)
    plain.load_state_dict(dec.state_dict())
    torch.testing.assert_close(dec(z, c1), plain(torch.cat([z, c1], 1)))
    with pytest.raises(DataError, match=r"\(2, 5, 4, 4\)"):
        dec(z, torch.randn(2, 4, 4, 4))
    with pytest.raises(IQVAEError):
        dec(z)
    with pytest.raises(IQVAEError):
        Decoder(3, 4, ch=8, ch_mult=(1, 2), cond_channels=0)(z, c1)


def test_last_layer_is_output_conv_and_gets_gradient():
    dec = Decoder(3, 4, ch=8, ch_mult=(1, 2), num_res_blocks=1)
    assert dec.last_layer is dec.conv_out.weight
    dec(torch.randn(1, 4, 4, 4)).square().mean().backward()
    assert dec.last_layer.grad is not None and dec.last_layer.grad.abs().sum() > 0


def test_out_size_pool_and_resize_for_spectrograms():
    enc = Encoder(1, 6, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False)
    dec = Decoder(1, 6, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False)
    mel = torch.randn(2, 1, 20, 37)
    z = enc(mel, out_size=(4, 4))
    assert z.shape == (2, 6, 4, 4)
    assert dec(z, out_size=(20, 37)).shape == (2, 1, 20, 37)
    # tiny spectrograms still work (symmetric padding never shrinks a side to 0)
    assert enc(torch.randn(1, 1, 2, 3), out_size=(4, 4)).shape == (1, 6, 4, 4)


def test_text_encoder_ignores_padding_embedding():
    enc = TextEncoder(vocab_size=11, length=6, out_dim=5, grid=(2, 3), width=16, layers=1, heads=2).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    out = enc(tokens)
    assert out.shape == (2, 5, 2, 3)
    with torch.no_grad():
        enc.tok_emb.weight[0].add_(10.0)  # the pad embedding must not matter (key-padding mask)
    torch.testing.assert_close(enc(tokens), out)
    # content does matter
    assert not torch.allclose(enc(torch.tensor([[3, 4, 6, 0, 0, 0], [7, 0, 0, 0, 0, 0]]))[0], out[0])
    assert torch.isfinite(enc(torch.zeros(1, 6, dtype=torch.long))).all()  # all-padding caption


def test_text_decoder_shape_and_dependence_on_grid():
    dec = TextDecoder(vocab_size=11, length=6, in_dim=5, grid=(2, 3), width=16, layers=1, heads=2)
    z = torch.randn(2, 5, 2, 3)
    logits = dec(z)
    assert logits.shape == (2, 11, 6)
    assert not torch.allclose(dec(z + 1.0), logits)


def _receptive_field(enc: Encoder, res: int) -> torch.Tensor:
    """bool (res, res): the input pixels that the top-left latent cell's output depends on (gradient != 0), with
    the GroupNorms (whose statistics span the whole map) made identities, so only the convolutions' reach counts."""
    for parent in list(enc.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(parent, name, torch.nn.Identity())
    x = torch.randn(1, 1, res, res, requires_grad=True)
    enc(x)[0, :, 0, 0].sum().backward()
    return x.grad[0, 0].abs() > 0


def test_context_branch_widens_the_receptive_field_to_the_whole_map():
    """Without it (and without attention) a latent cell sees a bounded neighbourhood; with 2 context levels on a
    16 x 16 grid (down to 4 x 4) the top-left cell depends on every pixel of the 32 px map."""
    torch.manual_seed(0)
    plain = Encoder(1, 4, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False)
    rf = _receptive_field(plain, 32)
    assert rf[0, 0] and not rf[19:, :].any() and not rf[:, 19:].any()  # local: a 19 x 19 corner of the 32 x 32 map
    wide = Encoder(1, 4, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, context_levels=2)
    assert _receptive_field(wide, 32).all()
    assert wide(torch.randn(2, 1, 32, 32)).shape == (2, 4, 16, 16)
    # context_levels=0 is the plain encoder, parameter for parameter (old checkpoints load)
    shapes = lambda e: {k: v.shape for k, v in e.state_dict().items()}  # noqa: E731
    new = lambda **kw: Encoder(1, 4, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=False, **kw)  # noqa: E731
    assert shapes(new(context_levels=0)) == shapes(new())


def test_text_encoder_spatial_queries_start_from_their_cells_codes():
    """spatial_queries: query (r, c) starts as the GPT's 2-D sin/cos code of (r, c) (a second implementation: the
    formula written out here), so neighbouring cells start closer than distant ones; the default starts random."""
    import math

    enc = TextEncoder(30, 40, 8, (4, 6), width=16, layers=1, heads=2, spatial_queries=True)
    q = enc.queries.detach().double()
    for r, c in ((0, 0), (1, 4), (3, 5)):
        row = [f(r * 100.0 ** (-k / 4)) for f in (math.sin, math.cos) for k in range(4)]
        col = [f(c * 100.0 ** (-k / 4)) for f in (math.sin, math.cos) for k in range(4)]
        assert torch.allclose(q[r * 6 + c], torch.tensor(row + col, dtype=torch.float64), atol=1e-6)
    d = lambda a, b: float((q[a] - q[b]).norm())  # noqa: E731
    assert d(0, 1) < d(0, 5) and d(0, 6) < d(0, 18)  # one column / row apart vs five / three
    assert enc.queries.requires_grad
    plain = TextEncoder(30, 40, 8, (4, 6), width=16, layers=1, heads=2)
    assert float(plain.queries.detach().std()) < 0.05
