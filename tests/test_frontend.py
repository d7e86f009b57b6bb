"""Front end: DFT-conv spectrogram, Slaney mel filters, normalisation, framing."""

import numpy as np
import pytest
import torch

from wav2small.frontend import (
    HOP,
    N_FFT,
    LocalNorm,
    LogMel,
    PitchLogSpec,
    PitchSalience,
    Spectrogram,
    Subharmonic,
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


# --- the pitch-resolving front end (wav2small-paper) ------------------------------------------
def _harmonic(f0: float, seconds: float = 1.0, gain: float = 1.0) -> torch.Tensor:
    """A 19-harmonic complex (1/k amplitudes) at f0 Hz in faint noise (every band above the
    −100 dB floor, as in any recording): a steady voiced sound."""
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 20))
    x = x + 1e-2 * np.random.default_rng(0).standard_normal(len(t))
    return torch.tensor(gain * x, dtype=torch.float32)[None]


def _peaks(row: torch.Tensor) -> list[int]:
    return [i for i in range(1, len(row) - 1) if row[i] > row[i - 1] and row[i] > row[i + 1]]


def test_pitch_spectrum_layout_and_rate():
    spec = PitchLogSpec()
    assert (spec.n_low, spec.n_mels, spec.n_bands) == (31, 12, 43)
    np.testing.assert_allclose(spec.low_hz[:2], [62.5, 93.75])  # bins 31.25 Hz apart
    assert spec.low_hz[-1] == 1000.0
    assert spec.melW.shape == (spec.high.weight.shape[0] // 2, 12)
    assert (spec.melW.sum(0) > 0).all()  # every mel band reads some DFT row
    assert not any(p.requires_grad for p in spec.parameters())
    image = spec(torch.randn(2, 16000))
    assert image.shape == (2, spec.frames(torch.tensor(16000)).item(), 43)
    assert image.shape[1] == (16000 - 541) // 64 + 1  # 250 frames/s
    with pytest.raises(ValueError, match="shorter than one frame"):
        spec(torch.randn(1, 540))


def test_pitch_spectrum_resolves_the_harmonics_of_voices_10_hz_apart():
    spec = PitchLogSpec()
    low = {f0: spec(_harmonic(f0)).mean(1)[0, : spec.n_low] for f0 in (145.0, 155.0)}
    peaks = {f0: _peaks(row) for f0, row in low.items()}
    # one peak per harmonic below 1 kHz (145 … 870 Hz: 6), at the harmonic's bin
    for f0, found in peaks.items():
        expected = [round(k * f0 / 31.25) - 2 for k in range(1, 7)]
        assert len(found) == 6
        assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) <= 1
    assert peaks[145.0] != peaks[155.0]  # higher harmonics land in different bins


def test_pitch_spectrum_centres_its_shr_band_on_the_same_instant():
    plain, spec = PitchLogSpec(), PitchLogSpec(shr_fft=1024)
    assert (spec.n_bands, spec.n_shr) == (43, 35)  # 62.5 … 593.75 Hz, 15.625 Hz apart
    np.testing.assert_allclose(spec.shr_hz[:2], [62.5, 78.125])
    assert spec.span == 165 + 8 * 127 and plain.span == 541  # the 64 ms band is the longest
    x = torch.zeros(1, 16000)
    x[0, 8000] = 1.0  # a click: every band peaks in the frame centred on it
    image = spec(x)[0]
    assert image.shape == (spec.frames(torch.tensor(16000)).item(), 43 + 35)
    low, high, shr = image[:, :31], image[:, 31:43], image[:, 43:]
    peaks = {int(b.mean(1).argmax()) for b in (low, high, shr)}
    assert len(peaks) == 1
    # the first two bands are those of the plain front end, 5 frames later (the FIR's length
    # makes the spans differ by a whole number of hops on either side)
    assert spec.span - plain.span == 2 * 5 * 64
    torch.testing.assert_close(image[:, :43], plain(x)[0, 5 : 5 + len(image)])


def test_subharmonic_row_rises_when_alternate_cycles_weaken_and_ignores_gain():
    spec = PitchLogSpec(shr_fft=1024)
    sub = Subharmonic(spec.shr_hz)

    def row(y: torch.Tensor) -> float:
        return sub(spec(y)[..., spec.n_bands :])[0, :, 0].mean().item()

    for f0 in (100.0, 150.0, 200.0):
        x = _harmonic(f0)
        t = torch.arange(x.shape[1]) / 16000
        # every other cycle weaker by d: sidebands at the half-integer multiples of F0
        rows = [row(x * (1 - d / 2 + d / 2 * torch.cos(np.pi * f0 * t))) for d in (0, 0.1, 0.2)]
        assert rows[0] + 3 < rows[1] < rows[2], (f0, rows)
        assert abs(row(10 * x) - rows[0]) < 0.01  # dB above the frame's mean: a gain cancels
    from wav2small.models.wav2small import Wav2SmallConfig

    with pytest.raises(ValueError, match="shr_fft needs frontend='pitch'"):
        Wav2SmallConfig(shr_fft=1024)


def test_local_norm_is_gain_invariant_and_local():
    spec, norm = PitchLogSpec(), LocalNorm(25)
    x = _harmonic(150.0, 2.0) * torch.linspace(0.2, 1.0, 32000)  # level changes over time
    ref = norm(spec(x))
    for gain in (0.05, 3.0):
        torch.testing.assert_close(norm(spec(gain * x)), ref, atol=0.02, rtol=0)  # dB
    # the level contour survives (it carries arousal): later frames are louder than earlier ones
    raw = spec(x).mean(2)[0]
    assert raw[-1] > raw[0] + 10
    # padding is excluded: a padded batch row equals the clip alone
    frames = spec.frames(torch.tensor([32000, 20000]))
    batch = torch.cat([x, torch.cat([x[:, :20000], torch.zeros(1, 12000)], 1)])
    together = norm(spec(batch), frames)
    alone = norm(spec(x[:, :20000]))
    # dB; a bin near the frame's floor (−67 dB) can differ by 0.006 dB between a batch of two
    # and one clip (float32 DFT sums in another order, MKL-DNN's choice), so the bound is 0.02 as
    # for a gain; leaked padding would shift whole frames by whole dB
    diff = (together[1:, : alone.shape[1]] - alone).abs()
    assert diff.max() < 0.02, diff.max()


def test_paper_preset_hears_a_gain_only_through_its_level_row():
    from wav2small.models import create_model
    from wav2small.models.wav2small import Wav2SmallConfig

    model = create_model("wav2small-paper").eval()
    assert model.norm == "local" and model.cfg.level
    x = _harmonic(180.0, 1.5)
    with torch.no_grad():
        quiet, loud = model.features(0.1 * x), model.features(x)
    bands = model.net.spec.n_bands  # then the level row, then the subharmonic row
    assert loud.shape[1] == bands + 2 and model.cfg.shr_fft
    for rows in (slice(0, bands), slice(bands + 1, None)):
        torch.testing.assert_close(quiet[:, rows], loud[:, rows], atol=0.02, rtol=0)  # dB
    shift = loud[:, bands] - quiet[:, bands]  # the level row: +20 dB for a gain of 10
    torch.testing.assert_close(shift, torch.full_like(shift, 20.0), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="level needs norm='local'"):
        Wav2SmallConfig(frontend="pitch", level=True)


@pytest.mark.slow
def test_paper_preset_exports_with_common_ops_and_fits_the_int8_budget(tmp_path):
    import onnx

    from wav2small.export import export
    from wav2small.models import count_parameters, create_model

    torch.manual_seed(0)
    model = create_model("wav2small-paper")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 16000) * 0.1)
    model.eval()
    assert abs(count_parameters(model) - 72_000) <= 0.02 * 72_000
    report = export(model, tmp_path, int8=True, gate_int8=False)
    assert max(report.max_abs_diff.values()) <= 1e-4  # ONNX Runtime equals torch
    assert report.int8_bytes <= 120 * 1024
    ops = {n.op_type for n in onnx.load(report.fp32_path).graph.node}
    common = {"Conv", "MatMul", "Gemm", "Mul", "Add", "Sub", "Div", "Log", "Max", "Min", "Relu"}
    common |= {"Slice", "Concat", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Shape"}
    common |= {"ReduceMean", "ReduceMax", "ReduceSum", "Softmax", "Exp", "Sqrt", "Where"}
    common |= {"IsNaN", "Equal", "Expand", "Gather", "Cast", "Constant", "ConstantOfShape"}
    common |= {"Clip", "Pow", "Range", "Less", "Not", "Flatten", "Identity", "Neg"}
    assert ops <= common, ops - common


def _glide(f_start: float, f_end: float, seconds: float = 1.0) -> torch.Tensor:
    """The 19-harmonic complex of :func:`_harmonic` with F0 gliding log-linearly."""
    n = int(seconds * 16000)
    f = f_start * (f_end / f_start) ** (np.arange(n) / n)
    phase = 2 * np.pi * np.cumsum(f) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    x = x + 1e-2 * np.random.default_rng(0).standard_normal(n)
    return torch.tensor(x, dtype=torch.float32)[None]


def test_pitch_salience_peaks_at_the_f0_of_a_harmonic_tone_and_shifts_with_it():
    spec = PitchLogSpec()
    salience = PitchSalience(spec.low_hz)
    assert salience.n_rows == 50 and salience.weight.shape == (spec.n_low, 48)
    step = np.log2(salience.f0_hz[1] / salience.f0_hz[0])  # octaves per candidate
    peaks, soft = {}, {}
    for f0 in (90.0, 120.0, 150.0, 165.0, 235.0):
        rows = salience(spec(_harmonic(f0))[..., : spec.n_low])[0]
        curve = rows[:, :48].mean(0)
        peaks[f0] = int(curve.argmax())
        # the peak is the candidate nearest F0 (not an octave above or below)
        assert abs(np.log2(salience.f0_hz[peaks[f0]] / f0)) <= step
        # soft-argmax F0 (semitones above 150 Hz) within two semitones of the truth (a soft
        # estimate: the many-harmonic candidates below a low voice pull it down a little)
        soft[f0] = rows[:, 48].mean().item()
        assert abs(soft[f0] - 12 * np.log2(f0 / 150)) < 2.0
    # a change of F0 is a shift along the candidates: +10 % moves the peak log2(1.1)/step
    assert abs(peaks[165.0] - peaks[150.0] - np.log2(1.1) / step) <= 1
    assert list(soft.values()) == sorted(soft.values())  # monotone in F0
    # voicing: a harmonic tone is far more salient than noise
    noise = torch.randn(1, 16000)
    assert (
        salience(spec(_harmonic(150.0))[..., :31])[0, :, 49].mean()
        > salience(spec(noise)[..., :31])[0, :, 49].mean() + 20
    )


def test_pitch_salience_tracks_a_rising_f0_and_ignores_gain():
    spec = PitchLogSpec()
    salience = PitchSalience(spec.low_hz)
    x = _glide(150.0, 171.0)  # +14 % in one second: a rising word (docs/SYNTH.md)
    f0 = salience(spec(x)[..., : spec.n_low])[0, :, 48]
    quarter = len(f0) // 4
    rise = f0[-quarter:].mean() - f0[:quarter].mean()
    assert 1.0 < rise.item() < 3.0  # 2.3 semitones in all; the quarters' means 1.7 apart
    falling = salience(spec(x.flip(1))[..., : spec.n_low])[0, :, 48]
    assert (falling[-quarter:].mean() - falling[:quarter].mean()).item() < -1.0
    # a gain adds the same dB to every bin: the saliences are of dB above the frame's mean
    loud = salience(spec(4.0 * x)[..., : spec.n_low])
    torch.testing.assert_close(loud, salience(spec(x)[..., : spec.n_low]), atol=0.05, rtol=0)
