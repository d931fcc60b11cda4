"""Waveform augmentation: each augmentation does to the audio what it claims (SNR, spectrum,
band limit, reverberation tail, speed), draws are reproducible, and the training loader uses it."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asrq.config import AugmentConfig
from asrq.data import augment as A
from asrq.data.loader import load_cuts, make_train_loader
from asrq.utils.io import AsrqError

SR = 16000


def _band_power(x: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


def _speech(tiny_data) -> np.ndarray:
    flac = sorted(tiny_data.corpus_dir.rglob("*.flac"))[0]
    return sf.read(str(flac), dtype="float32")[0]


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
@pytest.mark.parametrize("exponent", A.NOISE_EXPONENTS)
def test_noise_at_the_asked_snr(tiny_data, snr: float, exponent: float):
    x = _speech(tiny_data)
    rng = np.random.default_rng(0)
    y = A.add_noise(x, A.coloured_noise(len(x), exponent, rng), snr)
    measured = 10 * np.log10(A.power(x) / A.power(y - x))
    assert measured == pytest.approx(snr, abs=0.01)


def test_noise_colours_have_their_slopes():
    """Power per octave: white doubles each octave up, pink stays flat, brown halves."""
    rng = np.random.default_rng(1)
    for exponent, ratio in ((0.0, 2.0), (1.0, 1.0), (2.0, 0.5)):
        n = A.coloured_noise(SR * 20, exponent, rng)
        assert A.power(n) == pytest.approx(1.0, rel=1e-6)
        measured = _band_power(n, 2000, 4000) / _band_power(n, 1000, 2000)
        assert measured == pytest.approx(ratio, rel=0.1), exponent


def test_babble_is_other_talkers_at_the_snr(tiny_data):
    flacs = sorted(tiny_data.corpus_dir.rglob("*.flac"))
    sources = [sf.read(str(f), dtype="float32")[0] for f in flacs[1:6]]
    x = _speech(tiny_data)
    rng = np.random.default_rng(3)
    b = A.babble(sources, len(x), rng)
    assert b is not None and A.power(b) == pytest.approx(1.0, rel=1e-5)
    # speech-like: most energy below 4 kHz, unlike white noise
    assert _band_power(b, 0, 4000) > 5 * _band_power(b, 4000, 8000)
    y = A.add_noise(x, b, 10.0)
    assert 10 * np.log10(A.power(x) / A.power(y - x)) == pytest.approx(10.0, abs=0.01)
    assert A.babble([], 100, rng) is None


def test_telephone_removes_everything_above_4khz(tiny_data):
    rng = np.random.default_rng(2)
    x = 0.1 * A.coloured_noise(SR * 3, 0.0, rng)  # white: energy at all frequencies
    y = A.telephone(x)
    assert len(y) == len(x)
    above = _band_power(y, 4000, 8000)
    assert above / _band_power(y, 0, 8000) < 1e-4  # < -40 dB
    assert _band_power(y, 1000, 3000) / _band_power(x, 1000, 3000) > 0.8  # passband kept
    assert _band_power(y, 20, 150) / _band_power(x, 20, 150) < 0.2  # high-pass at 300 Hz
    s = _speech(tiny_data)
    assert _band_power(A.telephone(s), 4100, 8000) < 1e-4 * _band_power(s, 4100, 8000) + 1e-9


def test_gain_scales_by_db():
    x = np.linspace(-0.1, 0.1, 1000, dtype=np.float32)
    np.testing.assert_allclose(A.apply_gain(x, 6.0), x * 10 ** (6 / 20), rtol=1e-6)
    assert 10 * np.log10(A.power(A.apply_gain(x, -12.0)) / A.power(x)) == pytest.approx(-12.0)


def _click_cut(tmp_path):
    from lhotse import Recording

    x = np.zeros(SR * 2, dtype=np.float32)
    x[SR // 2] = 0.5
    sf.write(tmp_path / "click.wav", x, SR, subtype="FLOAT")
    return Recording.from_file(tmp_path / "click.wav").to_cut()


def test_reverb_spreads_an_impulse_with_lhotse_rir(tmp_path):
    """A click through generated room responses (lhotse FastRandomRIRGenerator + its
    ReverbWithImpulseResponse): energy after the click, none in the dry signal, is a large
    share; the bank is a function of the seed, its rooms differ."""
    cut = _click_cut(tmp_path)
    rng = np.random.default_rng(0)
    dry = A.augment_audio(cut, {}, rng)
    tail = slice(SR // 2 + 80, SR)  # 5..500 ms after the click
    assert A.power(dry[tail]) == 0.0
    shares = []
    for k in range(4):
        wet = A.augment_audio(cut, {"reverb": k}, rng, seed=5)
        assert len(wet) == len(dry) == 2 * SR
        assert A.power(wet) == pytest.approx(A.power(dry), rel=1e-3)  # power kept
        shares.append((wet[tail] ** 2).sum() / (wet**2).sum())
    assert min(shares) > 0.05 and len({round(s, 4) for s in shares}) == 4
    bank = A.rir_bank(5)
    assert len(bank) == A.RIR_BANK and bank[0].shape[0] == 1
    # made anew: the same rooms (lhotse's generator sums in float32 with torch's intra-op threads,
    # so the last bits depend on the thread count: compare the responses, not their bits)
    for a, b in zip(bank[:3], A.rir_bank(5, SR, 3), strict=True):
        assert a.shape == b.shape
        assert np.corrcoef(a[0], b[0])[0, 1] > 0.99
    other = A.rir_bank(6, SR, 1)[0]
    n = min(other.shape[1], bank[0].shape[1])
    assert other.shape != bank[0].shape or np.corrcoef(other[0, :n], bank[0][0, :n])[0, 1] < 0.9


def test_speed_perturbation_changes_duration(tiny_data):
    cut = next(iter(load_cuts(tiny_data.train_cuts)))
    rng = np.random.default_rng(0)
    n = len(A.augment_audio(cut, {}, rng))
    for factor in (0.9, 1.1):
        m = len(A.augment_audio(cut, {"speed": factor}, rng))
        assert m == pytest.approx(n / factor, abs=2)


def test_draws_reproducible_and_off_by_default(tiny_data):
    cuts = list(load_cuts(tiny_data.train_cuts))
    off = A.WaveformAugment(AugmentConfig())
    assert not AugmentConfig().enabled
    for c, f in zip(cuts, off.features(cuts), strict=True):
        torch.testing.assert_close(f, torch.from_numpy(c.load_features()))
    cfg = AugmentConfig(noise_prob=1.0, gain_prob=1.0, babble_share=0.5)
    aug = A.WaveformAugment(cfg)
    a, b, c = aug.features(cuts, 0), aug.features(cuts, 0), aug.features(cuts, 1)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert any(not torch.allclose(x, y) for x, y in zip(a, c, strict=True))
    for x, cut in zip(a, cuts, strict=True):
        assert x.shape == (cut.num_frames, 80)  # same frames as the stored features
        assert not torch.allclose(x, torch.from_numpy(cut.load_features()), atol=0.5)
    with pytest.raises(AsrqError, match="snr_range"):
        AugmentConfig(snr_range=[10.0, 5.0])


def test_train_loader_applies_augmentation(tiny_data):
    def first_batch(augment):
        loader = make_train_loader(
            tiny_data.train_cuts,
            max_duration=10,
            num_buckets=2,
            seed=0,
            num_workers=0,
            spec_augment=False,
            augment=augment,
        )
        loader.sampler.set_epoch(0)
        return next(iter(loader))

    plain = first_batch(None)
    aug = first_batch(AugmentConfig(speed_prob=1.0, telephone_prob=1.0, noise_prob=1.0))
    assert sorted(plain["cut_ids"]) == sorted(aug["cut_ids"])
    assert aug["feature_lens"].tolist() == sorted(aug["feature_lens"].tolist(), reverse=True)
    assert aug["feature_lens"].tolist() != plain["feature_lens"].tolist()  # speed changed T
    # telephone: the top mel bins (above 4 kHz) lose their energy
    top = slice(60, 80)
    n = int(aug["feature_lens"].min())
    assert aug["features"][:, :n, top].mean() < plain["features"][:, :n, top].mean() - 3
