"""Front end: DFT-conv spectrogram, Slaney mel filters, normalisation, framing."""

import numpy as np
import pytest
import torch

from wav2small.frontend import (
    HOP,
    N_FFT,
    LogMel,
    Spectrogram,
    _hz_to_mel,
    _mel_to_hz,
    mel_filterbank,
    num_frames,
    prenorm,
)


def test_spectrogram_equals_stft_power():
    x = torch.randn(2, 4000)
    ref = (
        torch.stft(
            x,
            N_FFT,
            HOP,
            window=torch.hann_window(N_FFT, periodic=True),
            center=False,
            return_complex=True,
        ).abs()
        ** 2
    )
    got = Spectrogram()(x)
    assert got.shape == ref.shape == (2, 33, num_frames(torch.tensor(4000)).item())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


def test_spectrogram_is_frozen():
    assert not any(p.requires_grad for p in Spectrogram().parameters())


def test_slaney_mel_scale_known_values():
    # librosa.hz_to_mel (htk=False): linear 200/3 Hz per mel below 1 kHz, log above.
    assert _hz_to_mel(1000.0) == pytest.approx(15.0)
    assert _hz_to_mel(500.0) == pytest.approx(7.5)
    assert _hz_to_mel(8000.0) == pytest.approx(15 + 27 * np.log(8) / np.log(6.4))
    f = np.array([0.0, 300.0, 1000.0, 3000.0, 8000.0])
    np.testing.assert_allclose(_mel_to_hz(_hz_to_mel(f)), f, atol=1e-9)


def test_mel_filterbank_shape_and_slaney_area():
    mel = mel_filterbank()
    assert mel.shape == (26, 33)
    assert (mel >= 0).all()
    # Slaney normalisation: each triangle has height 2 / (f_right - f_left), so its area over
    # frequency is 1. Bands that fall between FFT bins are partly or wholly empty at n_fft 64.
    edges = _mel_to_hz(np.linspace(0, _hz_to_mel(8000.0), 28))
    heights = 2 / (edges[2:] - edges[:-2])
    assert (mel.max(axis=1) <= heights + 1e-6).all()
    assert (mel.sum(axis=1) > 0).sum() >= 24


def test_prenorm_zero_mean_unit_rms_and_ignores_padding():
    x = torch.randn(2, 1000) * 3 + 5
    y = prenorm(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close((y**2).mean(1), torch.ones(2), atol=1e-4, rtol=0)
    padded = torch.cat([x[:1, :600], torch.full((1, 400), 99.0)], 1)
    masked = prenorm(padded, torch.tensor([600]))
    torch.testing.assert_close(masked[:, :600], prenorm(x[:1, :600]))
    assert masked[:, 600:].abs().max() == 0


def test_logmel_image_rate_and_short_input_error():
    image = LogMel()(torch.randn(1, 16000))
    assert image.shape == (1, 1, 499, 26)  # ≈ 500 frames/s, 26 mel bands
    with pytest.raises(ValueError, match="shorter than one frame"):
        LogMel()(torch.randn(1, 63))
