"""Condition encodings (iqvae.data.conditions) against closed forms and brute-force second implementations."""

import math

import numpy as np
import pytest
import torch

from iqvae.data.conditions import (
    LOG_MEL_FLOOR,
    boxes_to_layout,
    canny_edges,
    gaussian_heatmaps,
    hz_to_mel,
    log_mel,
    mel_centres,
    mel_filterbank,
    mel_to_hz,
    one_hot_seg,
    seg_boundaries,
)
from iqvae.errors import ConfigError, DataError, IQVAEError
from iqvae.modalities.text import TextVocab, tokenize

# ------------------------------------------------------------------------------------------------ heatmaps


def test_heatmap_peak_and_gaussian_falloff():
    coords = torch.tensor([[3.5, 5.5], [-1.0, 4.0], [10.0, 2.0]])
    h = gaussian_heatmaps(coords, 16, sigma=1.5)
    assert h.shape == (3, 16, 16) and h.dtype == torch.float32
    # Keypoint on the centre of pixel (row 5, col 3): value exactly 1 there, and the maximum.
    assert h[0, 5, 3].item() == pytest.approx(1.0, abs=1e-7)
    assert torch.argmax(h[0]).item() == 5 * 16 + 3
    # Known falloff: 2 pixels to the right -> exp(-4 / (2 sigma^2)); diagonal (1, 1) -> exp(-2 / (2 sigma^2)).
    assert h[0, 5, 5].item() == pytest.approx(math.exp(-4 / (2 * 1.5**2)), rel=1e-6)
    assert h[0, 6, 4].item() == pytest.approx(math.exp(-2 / (2 * 1.5**2)), rel=1e-6)
    # Missing keypoint: all zeros.
    assert h[1].abs().sum().item() == 0.0
    # Keypoint between pixel centres (x = 10.0 lies between columns 9 and 10): two equal maxima < 1.
    assert h[2, 1, 9].item() == pytest.approx(h[2, 1, 10].item()) and h[2].max() < 1.0
    assert 0.0 <= h.min() and h.max() <= 1.0


def test_heatmap_rejects_bad_input():
    with pytest.raises(DataError, match=r"\(K, 2\)"):
        gaussian_heatmaps(torch.zeros(3, 3), 16, 1.0)
    with pytest.raises(ConfigError, match="sigma"):
        gaussian_heatmaps(torch.zeros(1, 2), 16, 0.0)
    with pytest.raises(ConfigError, match="resolution"):
        gaussian_heatmaps(torch.zeros(1, 2), 0, 1.0)


# -------------------------------------------------------------------------------------------------- layout


def test_layout_integer_box_pixel_count():
    lay = boxes_to_layout([(2, 2, 3, 6, 8)], num_classes=4, resolution=16)
    assert lay.shape == (4, 16, 16) and lay.dtype == torch.float32
    assert lay[2].sum().item() == 4 * 5  # columns 2..5, rows 3..7
    assert lay[2, 3:8, 2:6].min().item() == 1.0
    assert lay[[0, 1, 3]].sum().item() == 0.0


def test_layout_matches_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    res, ncls = 20, 5
    boxes = []
    for _ in range(12):
        x0, y0 = rng.uniform(-3, res, size=2)
        w, h = rng.uniform(0, 10, size=2)
        boxes.append((int(rng.integers(ncls)), x0, y0, x0 + w, y0 + h))
    lay = boxes_to_layout(boxes, ncls, res).numpy()
    brute = np.zeros((ncls, res, res), np.float32)
    for c, x0, y0, x1, y1 in boxes:
        for i in range(res):
            for j in range(res):
                if x0 <= j + 0.5 <= x1 and y0 <= i + 0.5 <= y1:
                    brute[c, i, j] = 1.0
    np.testing.assert_array_equal(lay, brute)


def test_layout_rejects_bad_boxes():
    with pytest.raises(DataError, match="class 7"):
        boxes_to_layout([(7, 0, 0, 1, 1)], 4, 8)
    with pytest.raises(DataError, match="box 0"):
        boxes_to_layout([(1, 0, 0, 1)], 4, 8)
    with pytest.raises(DataError, match="x1 < x0"):
        boxes_to_layout([(1, 5, 0, 1, 1)], 4, 8)


# --------------------------------------------------------------------------------------------------- edges


def test_canny_finds_square_outline_only():
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = (255, 255, 255)
    e = canny_edges(img)
    assert e.shape == (1, 32, 32) and e.dtype == torch.float32
    assert set(torch.unique(e).tolist()) <= {0.0, 1.0}
    ys, xs = np.nonzero(e[0].numpy())
    assert len(ys) > 40
    # Every edge pixel lies within 1 pixel of the square's boundary.
    d = np.minimum.reduce([np.abs(ys - 7.5), np.abs(ys - 23.5), np.abs(xs - 7.5), np.abs(xs - 23.5)])
    assert d.max() <= 1.0


def test_canny_uses_colour_not_just_brightness():
    # Two halves of (almost) equal grey level: a grey-scale Canny would see nothing.
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = (200, 0, 0)
    img[:, 16:] = (0, 102, 0)
    gray = img.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert abs(gray[0, 0] - gray[0, 31]) < 1
    e = canny_edges(img)[0]
    assert e[:, 15:17].sum() >= 30 and e[:, :14].sum() == 0 and e[:, 18:].sum() == 0


def test_canny_rejects_non_uint8():
    with pytest.raises(DataError, match="uint8"):
        canny_edges(np.zeros((8, 8, 3), np.float32))


def test_seg_boundaries_brute_force():
    rng = np.random.default_rng(1)
    seg = torch.from_numpy(rng.integers(0, 4, size=(12, 12)))
    seg[3:9, 3:9] = 2  # a large region so there are interior pixels too
    b = seg_boundaries(seg)
    assert b.shape == (1, 12, 12) and b.dtype == torch.float32
    s = seg.numpy()
    brute = np.zeros((12, 12), np.float32)
    for i in range(12):
        for j in range(12):
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                a, c = i + di, j + dj
                if 0 <= a < 12 and 0 <= c < 12 and s[a, c] < s[i, j]:
                    brute[i, j] = 1
    np.testing.assert_array_equal(b[0].numpy(), brute)


def test_seg_boundaries_of_square_is_its_inner_outline():
    seg = torch.zeros(10, 10, dtype=torch.int64)
    seg[2:7, 3:8] = 1
    b = seg_boundaries(seg)[0]
    expected = torch.zeros(10, 10)
    expected[2:7, 3:8] = 1
    expected[3:6, 4:7] = 0
    assert torch.equal(b, expected)
    with pytest.raises(DataError, match="integer label map"):
        seg_boundaries(torch.zeros(4, 4))


def test_one_hot_seg():
    seg = torch.tensor([[0, 2], [1, 2]])
    oh = one_hot_seg(seg, 3)
    assert oh.shape == (3, 2, 2) and torch.equal(oh.argmax(0), seg) and torch.equal(oh.sum(0), torch.ones(2, 2))
    with pytest.raises(DataError, match=r"expected \[0, 1\]"):
        one_hot_seg(seg, 2)


# --------------------------------------------------------------------------------------------------- audio


def test_htk_mel_formula():
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)  # HTK mel is ~1000 at 1 kHz
    f = np.array([0.0, 123.0, 4000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)


def test_mel_filterbank_partition_of_unity_and_peaks():
    sr, n_fft, n_mels = 8000, 512, 32
    fb = mel_filterbank(sr, n_fft, n_mels)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and fb.dtype == torch.float32
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    centres = mel_centres(sr, n_mels)
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    np.testing.assert_allclose(fb.sum(0).numpy()[inside], 1.0, atol=1e-5)
    # Each triangle peaks at the FFT bin nearest its centre (within one bin) and is <= 1.
    peak_f = freqs[fb.argmax(1).numpy()]
    assert np.all(np.abs(peak_f - centres) <= sr / n_fft)
    assert fb.max() <= 1.0 and fb.min() >= 0.0
    # Centres equally spaced in mel.
    assert np.allclose(np.diff(hz_to_mel(centres)), hz_to_mel(sr / 2) / (n_mels + 1))
    # fmin / fmax are respected: nothing outside the band.
    fb2 = mel_filterbank(sr, n_fft, 8, fmin=500, fmax=2000)
    assert fb2.numpy()[:, (freqs < 500) | (freqs > 2000)].sum() == 0.0


def test_mel_filterbank_rejects_bad_band():
    with pytest.raises(ConfigError, match="fmax"):
        mel_filterbank(8000, 512, 32, fmax=5000)


def test_log_mel_pure_tone_band_and_energy():
    sr, n_fft, hop, n_mels = 8000, 512, 128, 32
    amp, f0 = 0.5, 1000.0
    t = torch.arange(sr) / sr
    x = amp * torch.sin(2 * math.pi * f0 * t)
    lm = log_mel(x, sr, n_mels, n_fft, hop, frames=64)
    assert lm.shape == (n_mels, 64) and lm.dtype == torch.float32
    mid = lm[:, 10:50]
    expected_band = int(np.argmin(np.abs(mel_centres(sr, n_mels) - f0)))
    assert set(mid.argmax(0).tolist()) <= {expected_band}
    # Parseval: one-sided power of a Hann-windowed sine = 3 N^2 A^2 / 32; rows sum to 1 around 1 kHz.
    energy = (torch.exp(lm[:, 30]) - 1e-5).sum().item()
    assert energy == pytest.approx(3 * n_fft**2 * amp**2 / 32, rel=0.02)
    # 63 STFT frames for 8000 samples, hop 128: the 64th is padding at the silence value.
    assert lm[:, 63].eq(LOG_MEL_FLOOR).all()
    assert log_mel(x, sr, n_mels, n_fft, hop, frames=20).shape == (n_mels, 20)


def test_log_mel_silence_and_short_input():
    lm = log_mel(torch.zeros(100), 8000, 16, 256, 64, frames=5)
    assert lm.shape == (16, 5)
    assert torch.allclose(lm, torch.full_like(lm, LOG_MEL_FLOOR))
    with pytest.raises(DataError, match=r"\(N,\)"):
        log_mel(torch.zeros(2, 100), 8000, 16, 256, 64, 5)


# ---------------------------------------------------------------------------------------------------- text


def test_tokenize():
    assert tokenize("A red-circle, at the TOP left!") == ["a", "red", "circle", "at", "the", "top", "left"]


def test_vocab_round_trip_pad_truncate_unknown():
    v = TextVocab(["a", "red", "circle", "at", "the", "top"])
    assert len(v) == 8 and v.words[:2] == ("<pad>", "<unk>") and v.words[2] == "a"
    ids = v.encode("A red circle at the top", 10)
    assert ids.dtype == torch.int64 and ids.shape == (10,)
    assert ids.tolist() == [2, 3, 4, 5, 6, 7, 0, 0, 0, 0]
    assert v.decode(ids) == "a red circle at the top"
    assert v.encode("a blue circle", 5).tolist() == [2, 1, 4, 0, 0]
    assert v.decode(v.encode("a blue circle", 5)) == "a <unk> circle"
    assert v.encode("a red circle at the top", 3).tolist() == [2, 3, 4]
    assert TextVocab(v.words) == v
    with pytest.raises(DataError, match="outside the vocabulary"):
        v.decode([99])


def test_vocab_build_orders_by_count_then_alphabet():
    caps = ["b a a", "c a b", "d"]
    v = TextVocab.build(caps)
    assert v.words[2:] == ("a", "b", "c", "d")  # a:3, b:2, c:1, d:1
    assert TextVocab.build(caps, min_count=2).words[2:] == ("a", "b")
    assert TextVocab.build(caps, max_size=3).words[2:] == ("a", "b", "c")


def test_vocab_rejects_bad_words():
    with pytest.raises(DataError, match="twice"):
        TextVocab(["a", "a"])
    with pytest.raises(DataError, match="letters"):
        TextVocab(["Red"])
    with pytest.raises(IQVAEError, match="length"):
        TextVocab(["a"]).encode("a", 0)
