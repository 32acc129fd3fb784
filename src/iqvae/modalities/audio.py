"""audio: a log-mel spectrogram, float32 (M, F): M mel bands, F frames (datasets should standardise it).

Network input: a one-channel "image" (B, 1, M, F) for the conv encoder, which pools to the latent grid
(``out_size``); the decoder returns to (M, F).  D_c loss: MSE; prediction: the values.  No cell head.  Rendered with
a viridis-like colour map (low frequencies at the bottom, time to the right); read from a ``.wav`` through the
model's dataset's feature extractor.  Metric: MSE.
"""

from __future__ import annotations

from PIL import Image

from ..errors import DataError
from .base import Modality, register
from .palette import colormap


class Audio(Modality):
    name = "audio"
    kind = "sequence"
    fit_metrics = ("scene_accuracy", "scene_mode_coverage")
    control = "scene_accuracy"
    control_judge = "scene"
    values = "finite"
    meaning = "log-mel"
    title = "Audio"
    menu_rank = 5
    file_hint = "a .wav file (16-bit PCM mono) or a .safetensors log-mel tensor"

    def item_shape(self, spec, resolution):
        return (spec.channels, spec.length)

    def in_channels(self, spec):
        return 1

    def network_input(self, spec, cond):
        return cond.unsqueeze(1)

    def _build(self, net, spec, cfg, **extra):  # the conv nets with the audio options, on the 1-channel spectrogram
        return net(1, cfg.embed_dim, cfg.audio_ch, cfg.audio_ch_mult, cfg.audio_num_res_blocks, attn=False,
                   dropout=cfg.dropout, **extra)

    def encode(self, encoder, x, grid):
        return encoder(x, out_size=grid)

    def decode(self, decoder, zq, spec):
        return decoder(zq, out_size=(spec.channels, spec.length)).squeeze(1)

    def render(self, x, spec, tile):
        m = x.detach().cpu().float().numpy()
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-8)
        img = Image.fromarray(colormap(m[::-1]), "RGB")
        return img.resize((tile, tile), Image.BILINEAR)

    def from_wav(self, path, spec, features):
        if features is None:
            raise DataError(f"'{path}': this model's dataset defines no .wav features; give the log-mel as a "
                            ".safetensors tensor")
        mel = features(path)
        mel = mel[0] if isinstance(mel, tuple) else mel
        spec.check(mel, 0, f"log-mel of '{path}'")
        return mel


AUDIO = register(Audio())
