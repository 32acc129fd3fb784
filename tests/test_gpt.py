import dataclasses

import pytest
import torch
import torch.nn.functional as F

from iqvae.config import from_dict, to_dict
from iqvae.errors import ConfigError, IQVAEError
from iqvae.models.gpt import GPT, GPTConfig, KVCache


def tiny(**kw) -> GPTConfig:
    base = dict(cond_vocab=11, image_vocab=13, n_cond=5, n_image=7, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return GPTConfig(**base)


def batch(cfg: GPTConfig, B: int = 3, t: int | None = None):
    cond = torch.randint(0, cfg.cond_vocab, (B, cfg.n_cond))
    image = torch.randint(0, cfg.image_vocab, (B, t or cfg.n_image))
    return cond, image


def test_paper_preset_defaults():
    cfg = GPTConfig()
    assert (cfg.n_layer, cfg.n_embd, cfg.image_vocab, cfg.block_size) == (24, 1024, 1024, 512)
    assert (cfg.n_cond, cfg.n_image) == (256, 256)
    # round trip through the shared config system
    assert from_dict(GPTConfig, to_dict(cfg)) == cfg


def test_options_declared_once_and_joined_with_the_codes():
    """GPTConfig = GPTOptions (what a user sets, the run config's ``model`` section) + what the token codes fix."""
    from iqvae.models.gpt import GPTOptions
    from iqvae.train.transformer import TransformerRunConfig

    option_names = [f.name for f in dataclasses.fields(GPTOptions)]
    assert option_names == ["n_layer", "n_head", "n_embd", "dropout", "bias", "pos_init", "cond_align", "above_input",
                            "above_window", "cfg_dropout"]
    assert set(f.name for f in dataclasses.fields(GPTConfig)) == set(option_names) | {
        "cond_vocab", "image_vocab", "n_cond", "n_image", "image_grid"}
    assert type(TransformerRunConfig().model) is GPTOptions
    assert to_dict(TransformerRunConfig().model) == {k: v for k, v in to_dict(GPTConfig()).items() if k in option_names}
    meta = {"cond_vocab": 9, "image_vocab": 10, "n_cond": 16, "n_image": 32, "tokens_shape": [4, 4, 2]}
    opts = GPTOptions(n_layer=1, n_head=2, n_embd=8, dropout=0.1, bias=False, pos_init="spatial", cond_align=True,
                      above_input=True, above_window=2)
    cfg = GPTConfig.from_options(opts, meta)
    assert cfg == GPTConfig(cond_vocab=9, image_vocab=10, n_cond=16, n_image=32, image_grid=[4, 4, 2], n_layer=1,
                            n_head=2, n_embd=8, dropout=0.1, bias=False, pos_init="spatial", cond_align=True,
                            above_input=True, above_window=2)
    # the grid is kept only where an option reads it (as before: saved configs stay the same)
    assert GPTConfig.from_options(GPTOptions(n_layer=1, n_head=2, n_embd=8), meta).image_grid == []
    # a saved model config (flat, every constructor argument) still loads
    saved = {"above_input": False, "above_window": 1, "bias": True, "cond_align": False, "cond_vocab": 9,
             "dropout": 0.0, "image_grid": [], "image_vocab": 10, "n_cond": 16, "n_embd": 8, "n_head": 2,
             "n_image": 32, "n_layer": 1, "pos_init": "normal"}
    assert to_dict(from_dict(GPTConfig, saved)) == {**saved, "cfg_dropout": 0.0}  # older configs: no null condition
    # options are checked when the run config is read, before any codes are loaded
    with pytest.raises(ConfigError, match="n_head"):
        from_dict(TransformerRunConfig, {"model": {"n_embd": 10, "n_head": 4}})
    with pytest.raises(ConfigError, match="above_window=2 needs above_input=true"):
        from_dict(TransformerRunConfig, {"model": {"above_window": 2}})


@pytest.mark.parametrize(
    "kw, word",
    [({"n_embd": 15}, "n_head"), ({"n_layer": 0}, "n_layer"), ({"dropout": 1.0}, "dropout"), ({"n_cond": 0}, "n_cond")],
)
def test_config_validation(kw, word):
    with pytest.raises(ConfigError, match=word):
        tiny(**kw).validate()
    with pytest.raises(ConfigError, match=word):
        from_dict(GPTConfig, to_dict(tiny(**kw)))


def test_logits_shape_and_loss_contract():
    cfg = tiny()
    model = GPT(cfg)
    cond, image = batch(cfg)
    for t in (1, 4, cfg.n_image):
        logits = model(cond, image[:, :t])
        assert logits.shape == (3, t, cfg.image_vocab)
    # oracle: a second, explicit implementation of the sequence layout
    logits = model(cond, image)
    x = torch.cat([model.wte_cond(cond), model.wte_image(image[:, :-1])], 1)
    x = x + model.wpe(torch.arange(x.shape[1]))
    for blk in model.blocks:
        x = blk(x)
    expect = model.lm_head(model.ln_f(x))[:, cfg.n_cond - 1 :]
    torch.testing.assert_close(logits, expect, atol=1e-6, rtol=1e-5)


def test_causality():
    cfg = tiny()
    model = GPT(cfg).eval()
    cond, image = batch(cfg, B=2)
    base = model(cond, image)
    for j in range(cfg.n_image):
        img2 = image.clone()
        img2[:, j] = (img2[:, j] + 1) % cfg.image_vocab
        out = model(cond, img2)
        # logits[:, i] predicts token i from tokens < i: changing token j affects only positions > j
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], atol=0, rtol=0)
        if j < cfg.n_image - 1:
            assert (out[:, j + 1 :] - base[:, j + 1 :]).abs().amax(-1).min() > 0
    for i in range(cfg.n_cond):
        c2 = cond.clone()
        c2[:, i] = (c2[:, i] + 1) % cfg.cond_vocab
        diff = (model(c2, image) - base).abs().amax(-1)
        assert diff.min() > 0, f"changing condition token {i} must change every image logit"


def test_loss_only_on_image_tokens():
    """The loss is a function of image targets only: its gradient never touches the condition head, and
    logits have exactly one row per image token."""
    cfg = tiny()
    model = GPT(cfg)
    cond, image = batch(cfg)
    logits = model(cond, image)
    loss = F.cross_entropy(logits.reshape(-1, cfg.image_vocab), image.reshape(-1))
    # brute force: sum of -log p(x_j | c, x_<j) over image tokens, each computed by a separate forward
    nll = 0.0
    for j in range(cfg.n_image):
        lj = model(cond, image[:, : j + 1])[:, -1]
        nll = nll + F.cross_entropy(lj, image[:, j], reduction="sum")
    torch.testing.assert_close(loss, nll / image.numel(), atol=1e-5, rtol=1e-5)
    # the last image token's embedding is never an input
    loss.backward()
    used_rows = set(image[:, :-1].flatten().tolist())
    unused = [r for r in range(cfg.image_vocab) if r not in used_rows]
    if unused:
        assert model.wte_image.weight.grad[unused].abs().max() == 0


def test_image_embeds_replaces_embeddings():
    cfg = tiny()
    model = GPT(cfg)
    cond, image = batch(cfg)
    emb = model.wte_image(image)
    torch.testing.assert_close(model(cond, image, image_embeds=emb), model(cond, image), atol=0, rtol=0)
    one_hot = F.one_hot(image, cfg.image_vocab).float()
    torch.testing.assert_close(model.embed_image_soft(one_hot), emb, atol=1e-6, rtol=0)
    # a soft mixture is the weighted sum of rows
    probs = torch.softmax(torch.randn(3, cfg.n_image, cfg.image_vocab), -1)
    manual = torch.einsum("btv,vd->btd", probs, model.wte_image.weight)
    torch.testing.assert_close(model.embed_image_soft(probs), manual, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("B", [1, 3])
def test_cached_path_matches_forward(B):
    cfg = tiny()
    model = GPT(cfg).eval()
    cond, image = batch(cfg, B)
    full = model(cond, image)
    cache = KVCache(cfg, B)
    steps = [model.prefill(cond, cache)]
    for j in range(cfg.n_image - 1):
        steps.append(model.decode(image[:, j : j + 1], cfg.n_cond + j, cache))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    # chunked forward_cached (start_pos > 0 with T > 1 uses an explicit mask)
    cache2 = KVCache(cfg, B)
    model.forward_cached(model.wte_cond(cond[:, :2]), 0, cache2)
    rest = torch.cat([model.wte_cond(cond[:, 2:]), model.wte_image(image[:, :-1])], 1)
    out = model.forward_cached(rest, 2, cache2)[:, cfg.n_cond - 3 :]
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_input_validation():
    cfg = tiny()
    model = GPT(cfg)
    cond, image = batch(cfg)
    with pytest.raises(IQVAEError, match=r"'cond' must have shape \(\*, 5\)"):
        model(cond[:, :4], image)
    with pytest.raises(IQVAEError, match=r"'image' must have shape \(3, \*\)"):
        model(cond, image[:2])
    with pytest.raises(IQVAEError, match=r"between 1 and n_image=7"):
        model(cond, torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(IQVAEError, match=r"'image' ids must lie in \[0, 12\]"):
        model(cond, image + cfg.image_vocab)
    with pytest.raises(IQVAEError, match=r"'cond' ids must lie in \[0, 10\]"):
        model(cond - 20, image)
    with pytest.raises(IQVAEError, match="integer tensor"):
        model(cond.float(), image)
    with pytest.raises(IQVAEError, match="image_embeds"):
        model(cond, image, image_embeds=torch.zeros(3, 7, 5))
    with pytest.raises(IQVAEError, match="batch 2"):
        model.prefill(cond, KVCache(cfg, 2))
    with pytest.raises(IQVAEError, match="decode position"):
        model.decode(image[:, :1], cfg.block_size - 1, KVCache(cfg, 3))


def test_weight_decay_groups_and_param_count():
    cfg = tiny(bias=True)
    model = GPT(cfg)
    for decay_emb in (False, True):
        groups = model.param_groups(0.1, decay_embeddings=decay_emb)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        decay = {id(p) for p in groups[0]["params"]}
        for name, p in model.named_parameters():
            is_emb = name.startswith(("wte_", "wpe"))
            expect = p.dim() >= 2 and (decay_emb or not is_emb)
            assert (id(p) in decay) == expect, name
    opt = model.configure_optimizer(1.5e-4, weight_decay=0.1)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # closed-form parameter count
    C, L, V, Vc, S = cfg.n_embd, cfg.n_layer, cfg.image_vocab, cfg.cond_vocab, cfg.block_size
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    total = (Vc + V + S) * C + L * per_block + 2 * C + V * C
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - (Vc + V + S) * C
    with pytest.raises(IQVAEError, match="lr"):
        model.configure_optimizer(0.0)


def test_paper_size_param_count():
    """GPT-2 medium shape (24 x 1024) plus two 1024-entry vocabularies: about 0.3B non-embedding parameters."""
    cfg = GPTConfig()
    C, L = cfg.n_embd, cfg.n_layer
    per_block = 12 * C * C + 13 * C
    assert per_block * L + 2 * C + cfg.image_vocab * C == pytest.approx(3.04e8, rel=0.01)


def test_no_bias_variant_runs():
    cfg = dataclasses.replace(tiny(), bias=False)
    model = GPT(cfg)
    cond, image = batch(cfg)
    assert model(cond, image).shape == (3, cfg.n_image, cfg.image_vocab)
    assert all(not n.endswith("bias") for n, _ in model.named_parameters())


# ---------------------------------------------------------------------------------------------- pos_init=spatial
def test_spatial_position_table_geometry():
    """Aligned slots share codes, RMS is 0.02, and the code inner product depends only on the spatial offset."""
    from iqvae.models.gpt import spatial_position_table

    cfg = tiny(n_cond=24, n_image=24, n_embd=32, pos_init="spatial", image_grid=[4, 6])
    table = spatial_position_table(cfg)
    assert table.shape == (cfg.block_size, cfg.n_embd)
    torch.testing.assert_close(table.pow(2).mean(1).sqrt(), torch.full((cfg.block_size,), 0.02))
    n = cfg.n_cond
    for j in range(1, cfg.n_image):  # the slot predicting image token j starts equal to condition token j
        torch.testing.assert_close(table[n - 1 + j], table[j])
    cond = table[:n].view(4, 6, -1)
    # translation invariance of <P(r, c), P(r + dr, c + dc)> (sin/cos codes, equal norms)
    for dr, dc in ((0, 1), (1, 0), (1, 2), (2, -1)):
        dots = [float(cond[r, c] @ cond[r + dr, c + dc]) for r in range(4) for c in range(6)
                if 0 <= r + dr < 4 and 0 <= c + dc < 6]
        assert max(dots) - min(dots) < 1e-6, (dr, dc)
    # distinct locations get distinct codes, and a location is closest to itself
    gram = cond.reshape(24, -1) @ cond.reshape(24, -1).T
    assert torch.equal(gram.argmax(1), torch.arange(24))
    # GPT uses it as the initial value of its (learned) position table
    model = GPT(cfg)
    torch.testing.assert_close(model.wpe.weight.detach(), table)
    assert model.wpe.weight.requires_grad


def test_spatial_position_table_text_condition_and_rq_depth():
    from iqvae.models.gpt import spatial_position_table

    cfg = tiny(n_cond=10, n_image=18, n_embd=24, pos_init="spatial", image_grid=[3, 3, 2])
    table = spatial_position_table(cfg)
    img = table[cfg.n_cond - 1 : cfg.n_cond - 1 + cfg.n_image]
    # depth levels of one location differ; equal locations/depths share codes across rows only when equal
    assert not torch.allclose(img[1], img[2]) and not torch.allclose(img[2], img[3])  # j=1 depth 1 vs j=2 (0,1) depth 0
    assert len({tuple(r.tolist()) for r in table[: cfg.n_cond]}) == cfg.n_cond  # 1-D codes of a caption
    torch.testing.assert_close(table.pow(2).mean(1).sqrt(), torch.full((cfg.block_size,), 0.02))


@pytest.mark.parametrize("kw, word", [({"pos_init": "sincos"}, "pos_init"), ({"pos_init": "spatial"}, "image_grid"),
                                      ({"image_grid": [2, 3]}, "image_grid"), ({"image_grid": [7, 1, 1, 1]}, "image_grid")])
def test_spatial_config_errors(kw, word):
    with pytest.raises(ConfigError, match=word):
        tiny(**kw).validate()


# ---------------------------------------------------------------------------------------------- cond_align
def test_aligned_cond_index():
    from iqvae.models.gpt import aligned_cond_index

    assert aligned_cond_index(tiny(n_cond=4, n_image=4, cond_align=True)).tolist() == [0, 1, 2, 3]
    # RQ depth 3 innermost: tokens 0-2 sit at location 0, 3-5 at location 1
    assert aligned_cond_index(tiny(n_cond=2, n_image=6, cond_align=True)).tolist() == [0, 0, 0, 1, 1, 1]


def test_cond_align_forward_matches_direct_computation():
    """Oracle: the slot predicting image token j gets wte_align[cond[j // r]] on top of its usual input."""
    torch.manual_seed(0)
    cfg = tiny(n_cond=3, n_image=6, cond_align=True)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.wte_align.weight.normal_(0.0, 1.0)  # large, so a misplaced embedding shows
    cond, image = batch(cfg)
    x = torch.cat([model.wte_cond(cond), model.wte_image(image[:, :-1])], dim=1).clone()
    for j in range(cfg.n_image):
        x[:, cfg.n_cond - 1 + j] += model.wte_align.weight[cond[:, j // 2]]
    expect = model.lm_head(model._trunk(x, 0, None))[:, cfg.n_cond - 1:]
    torch.testing.assert_close(model(cond, image), expect, atol=1e-5, rtol=0)


def test_cond_align_with_zero_table_equals_plain_model():
    torch.manual_seed(1)
    plain = GPT(tiny(n_cond=7, n_image=7)).eval()
    aligned = GPT(tiny(n_cond=7, n_image=7, cond_align=True)).eval()
    state = dict(plain.state_dict())
    state["wte_align.weight"] = torch.zeros_like(aligned.wte_align.weight)
    aligned.load_state_dict(state)
    cond, image = batch(plain.config)
    torch.testing.assert_close(aligned(cond, image), plain(cond, image), atol=0, rtol=0)
    assert aligned.num_params(non_embedding=True) == plain.num_params(non_embedding=True)
    with torch.no_grad():
        aligned.wte_align.weight.normal_()
    assert (aligned(cond, image) - plain(cond, image)).abs().max() > 1e-2


def test_cond_align_errors():
    with pytest.raises(ConfigError, match="cond_align"):
        GPT(tiny(n_cond=4, n_image=6, cond_align=True))
    model = GPT(tiny(n_cond=7, n_image=7, cond_align=True)).eval()
    cond, _ = batch(model.config, B=2)
    cache = KVCache(model.config, 2)
    nxt = model.prefill(cond, cache).argmax(-1, keepdim=True)
    with pytest.raises(IQVAEError, match="cond="):
        model.decode(nxt, model.config.n_cond, cache)


# ---------------------------------------------------------------------------------------------- above_input
@pytest.mark.parametrize("grid", [[2, 3], [2, 2, 2]])
def test_above_input_forward_matches_direct_computation(grid):
    """Oracle: the slot predicting image token j also gets above_proj(wte_image[x_{j-W}]), W = w * depth."""
    torch.manual_seed(2)
    n_image = 6 if len(grid) == 2 else 8
    cfg = tiny(n_cond=4, n_image=n_image, above_input=True, image_grid=grid)
    model = GPT(cfg).eval()
    W = grid[1] * (grid[2] if len(grid) == 3 else 1)
    assert model.above_offset == W
    with torch.no_grad():
        model.above_proj.weight.normal_(0.0, 1.0)
    cond, image = batch(cfg)
    x = torch.cat([model.wte_cond(cond), model.wte_image(image[:, :-1])], dim=1).clone()
    for j in range(W, cfg.n_image):
        x[:, cfg.n_cond - 1 + j] += model.above_proj(model.wte_image.weight[image[:, j - W]])
    expect = model.lm_head(model._trunk(x, 0, None))[:, cfg.n_cond - 1:]
    torch.testing.assert_close(model(cond, image), expect, atol=1e-5, rtol=0)
    # prefixes shorter than one row get no above input at all; a prefix's logits equal the full run's
    torch.testing.assert_close(model(cond, image[:, :W]), expect[:, :W], atol=1e-5, rtol=0)
    # soft embeddings (Gumbel sampling's path) feed the above input too: one-hot embeddings give the same logits
    onehot = F.one_hot(image, cfg.image_vocab).float()
    torch.testing.assert_close(model(cond, image, image_embeds=model.embed_image_soft(onehot)), expect, atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("grid, K", [([3, 4], 3), ([3, 4], 4), ([2, 3, 2], 2)])
def test_above_window_forward_matches_direct_computation(grid, K):
    """Oracle: slot j also gets sum_d map_d(e(x_{j - W + d*depth})) over d < K with col(j) + d < w (j >= W)."""
    torch.manual_seed(4)
    depth = grid[2] if len(grid) == 3 else 1
    n_image = grid[0] * grid[1] * depth
    cfg = tiny(n_cond=4, n_image=n_image, above_input=True, above_window=K, image_grid=grid)
    model = GPT(cfg).eval()
    W, w = grid[1] * depth, grid[1]
    assert model.above_offsets() == [W - d * depth for d in range(K)] and len(model.above_right) == K - 1
    maps = [model.above_proj, *model.above_right]
    with torch.no_grad():
        for m in maps:
            m.weight.normal_(0.0, 1.0)
    cond, image = batch(cfg)
    x = torch.cat([model.wte_cond(cond), model.wte_image(image[:, :-1])], dim=1).clone()
    for j in range(W, n_image):
        col = (j // depth) % w
        for d in range(K):
            if col + d < w:
                x[:, cfg.n_cond - 1 + j] += maps[d](model.wte_image.weight[image[:, j - W + d * depth]])
    expect = model.lm_head(model._trunk(x, 0, None))[:, cfg.n_cond - 1:]
    torch.testing.assert_close(model(cond, image), expect, atol=1e-5, rtol=0)
    for t in (W, W + 1, n_image - 1):  # prefixes equal the full run's logits
        torch.testing.assert_close(model(cond, image[:, :t]), expect[:, :t], atol=1e-5, rtol=0)
    onehot = F.one_hot(image, cfg.image_vocab).float()  # the soft-embedding (Gumbel) path
    torch.testing.assert_close(model(cond, image, image_embeds=model.embed_image_soft(onehot)), expect, atol=1e-5,
                               rtol=0)
    # causal: changing token i changes no logit at or before i
    base = model(cond, image)
    for i in range(n_image):
        other = image.clone()
        other[:, i] = (other[:, i] + 1) % cfg.image_vocab
        torch.testing.assert_close(model(cond, other)[:, : i + 1], base[:, : i + 1], atol=1e-6, rtol=0)


def test_above_window_options():
    assert GPT(tiny(n_cond=4, n_image=6, above_input=True, image_grid=[2, 3])).above_right is None  # K = 1: as before
    with pytest.raises(ConfigError, match="above_window"):
        GPT(tiny(n_cond=4, n_image=6, above_input=True, above_window=4, image_grid=[2, 3]))
    with pytest.raises(ConfigError, match="above_window"):
        GPT(tiny(n_cond=4, n_image=6, above_input=True, above_window=0, image_grid=[2, 3]))
    with pytest.raises(ConfigError, match="needs above_input"):  # no flag that silently does nothing
        GPT(tiny(n_cond=4, n_image=6, above_window=2, image_grid=[2, 3]))
    model = GPT(tiny(n_cond=4, n_image=6, above_input=True, above_window=2, image_grid=[2, 3])).eval()
    cond, image = batch(model.config)
    cache = KVCache(model.config, 3)
    model.prefill(cond, cache)
    for j in range(1, 3):
        model.decode(image[:, j - 1 : j], 4 + j - 1, cache)
    with pytest.raises(IQVAEError, match=r"above=, shape \(3, 2\)"):
        model.decode(image[:, 2:3], 4 + 2, cache, above=image[:, :1])


def test_above_input_is_causal_and_errors():
    torch.manual_seed(3)
    cfg = tiny(n_cond=4, n_image=6, above_input=True, image_grid=[2, 3])
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.above_proj.weight.normal_(0.0, 1.0)
    cond, image = batch(cfg)
    base = model(cond, image)
    for j in range(cfg.n_image):  # changing token j changes no logit at or before j
        other = image.clone()
        other[:, j] = (other[:, j] + 1) % cfg.image_vocab
        torch.testing.assert_close(model(cond, other)[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="image_grid"):
        GPT(tiny(above_input=True))
    cache = KVCache(cfg, 3)
    model.prefill(cond, cache)
    for j in range(1, 3):  # tokens of the first row need no above token
        model.decode(image[:, j - 1 : j], cfg.n_cond + j - 1, cache)
    with pytest.raises(IQVAEError, match="above="):
        model.decode(image[:, 2:3], cfg.n_cond + 2, cache)
