"""Shared model ops: masks, per-utterance normalisation, masked pooling, receptive fields."""

from __future__ import annotations

import pytest
import torch

from wav2small import frontend, ops
from wav2small.models import exits
from wav2small.teachers import dawn


def test_time_mask_marks_the_first_length_positions():
    mask = ops.time_mask(torch.tensor([0, 2, 4]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False] * 4, [True, True, False, False], [True] * 4]


def test_prenorm_ignores_padding_and_zeroes_it():
    g = torch.Generator().manual_seed(0)
    clip = 3.0 + 2.0 * torch.randn(1, 500, generator=g)
    padded = torch.cat([clip, 7.0 * torch.ones(1, 300)], dim=1)
    alone = ops.prenorm(clip)
    batched = ops.prenorm(padded, torch.tensor([500]))
    torch.testing.assert_close(batched[:, :500], alone, atol=1e-5, rtol=0)
    assert torch.all(batched[:, 500:] == 0)
    assert abs(float(alone.mean())) < 1e-5 and abs(float(alone.std(unbiased=False)) - 1) < 1e-4


def test_prenorm_eps_keeps_silence_finite():
    out = ops.prenorm(torch.zeros(2, 100), torch.tensor([100, 40]))
    assert torch.isfinite(out).all() and torch.all(out == 0)


def test_masked_mean_averages_only_valid_frames():
    x = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    out = ops.masked_mean(x, torch.tensor([1, 3]))
    torch.testing.assert_close(out, torch.stack([x[0, 0], x[1].mean(0)]))
    torch.testing.assert_close(ops.masked_mean(x, None), x.mean(1))


def test_receptive_field_of_the_wav2vec2_conv_stack_is_400_samples():
    kernels, strides = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]
    assert ops.receptive_field(kernels, strides) == 400  # 25 ms at 16 kHz
    with pytest.raises(ValueError):
        ops.receptive_field([3, 3], [2])


def test_one_implementation_everywhere():
    assert frontend.prenorm is ops.prenorm and frontend.time_mask is ops.time_mask
    assert exits.masked_mean is ops.masked_mean and exits.frame_mask is ops.time_mask
    wave, lengths = torch.randn(2, 64), torch.tensor([64, 30])
    torch.testing.assert_close(
        dawn.normalise_per_utterance(wave, lengths), ops.prenorm(wave, lengths)
    )
