"""Waveform augmentation of training utterances: speed, reverberation, noise, telephone, gain.

Applied on the fly where training batches are built (:class:`asrq.data.loader.AsrDataset`),
configured by ``data.augment`` (:class:`asrq.config.AugmentConfig`). Per utterance, each
augmentation is drawn with its probability, in this order:

1. **speed** (lhotse ``Cut.perturb_speed``, a factor from ``speed_factors``): tempo and pitch,
   like Kaldi's 3-way speed perturbation;
2. **reverb**: lhotse's ``ReverbWithImpulseResponse`` (convolution, shift to the direct path,
   power kept) with a room impulse response drawn from a bank of :data:`RIR_BANK` responses
   that lhotse's ``FastRandomRIRGenerator`` (FRA-RIR) generates once per process from
   ``augment.seed`` (generating one per utterance took ~110 ms, the bank takes ~5 s once);
3. **noise** at an SNR drawn from ``snr_range``: coloured noise (power spectrum ``1/f^a``,
   ``a`` in {0 white, 1 pink, 2 brown}) made here, or, for ``babble_share`` of the draws, babble:
   the sum of 3-5 *other* utterances of the same batch at random offsets;
4. **telephone**: band-limited to 300-3400 Hz (resampled to 8 kHz and back with a 3.4 kHz
   low-pass, so nothing is left above 4 kHz, plus a 300 Hz high-pass);
5. **gain** in dB from ``gain_db_range`` (not clipped: the features are log-mel of floats).

Only utterances that draw at least one augmentation are decoded and get fbank computed here
(lhotse's ``Fbank``, as at prepare time); the others keep their stored features. Why on the
fly rather than N augmented copies made at prepare time: measured on 2 shared cores, a 3.7 s
utterance costs 0.9 ms with stored features, 6 ms decoded + fbank (gain only), 10-18 ms with
one of speed / reverb / noise / telephone and 30 ms with all five, in the data-loader worker:
a 30 s batch (~8 utterances) at 50% augmentation adds ~60-120 ms beside a ~450 ms training
step. Copies would cost the same time up front for every copy, multiply the feature store,
and a 14-minute run (~3.7 epochs) would not even see most of them; on the fly, every epoch
hears a new draw. Draws depend only on ``(augment.seed, epoch, cut id)``, so a resumed run
augments exactly as an uninterrupted one.

Nothing is downloaded: noises and room responses are generated.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrq.config import AugmentConfig

SAMPLE_RATE = 16000
TELEPHONE_RATE = 8000
TELEPHONE_HIGHPASS_HZ = 300.0
NOISE_EXPONENTS = (0.0, 1.0, 2.0)  # white, pink, brown
BABBLE_TALKERS = (3, 5)
RIR_BANK = 48  # generated room responses per process


def utterance_rng(cfg: AugmentConfig, epoch: int, cut_id: str) -> np.random.Generator:
    """The generator of one utterance's draws: a function of (seed, epoch, cut id) only."""
    return np.random.default_rng([cfg.seed, epoch, zlib.crc32(cut_id.encode())])


def power(x: np.ndarray) -> float:
    """Mean square of ``x``."""
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def coloured_noise(num_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as ``1/f^exponent`` (0 white, 1 pink, 2
    brown), unit power, ``(num_samples,)`` float32."""
    if exponent == 0:
        shaped = rng.standard_normal(num_samples)
    else:  # shape white noise in the frequency domain, at a power-of-2 length (fast FFT)
        n = 1 << max(1, int(num_samples - 1).bit_length())
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n)
        f[0] = f[1]
        shaped = np.fft.irfft(spec / f ** (exponent / 2), n=n)[:num_samples]
    p = power(shaped)
    return (shaped / np.sqrt(p) if p > 0 else shaped).astype(np.float32)


def babble(
    sources: Sequence[np.ndarray], num_samples: int, rng: np.random.Generator
) -> np.ndarray | None:
    """3-5 talkers from ``sources`` (tiled to length, random start offsets) summed, unit power;
    None when there are no sources."""
    sources = [s for s in sources if len(s) > 0 and power(s) > 0]
    if not sources:
        return None
    k = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
    out = np.zeros(num_samples, dtype=np.float64)
    for i in rng.choice(len(sources), size=k, replace=len(sources) < k):
        s = sources[int(i)]
        s = s / np.sqrt(power(s))
        tiled = np.resize(s, num_samples + len(s))
        start = int(rng.integers(0, len(s)))
        out += tiled[start : start + num_samples]
    p = power(out)
    return (out / np.sqrt(p) if p > 0 else out).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x + g * noise`` with ``g`` such that ``10 log10(P(x) / P(g * noise)) = snr_db``."""
    px, pn = power(x), power(noise)
    if px == 0 or pn == 0:
        return x.copy()
    g = np.sqrt(px / (pn * 10 ** (snr_db / 10)))
    return (x + g * noise[: len(x)]).astype(np.float32)


def telephone(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Telephone band 300-3400 Hz: resample to 8 kHz and back (nothing left above 4 kHz) and a
    300 Hz high-pass (torchaudio biquad)."""
    import torchaudio.functional as AF

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    # rolloff 0.85 of the 4 kHz Nyquist: the low-pass ends the band at 3.4 kHz, as telephones
    # do, and its transition is over before 4 kHz (the default 0.99 leaks just above it)
    kw = {"lowpass_filter_width": 16, "rolloff": 0.85}
    narrow = AF.resample(t, sample_rate, TELEPHONE_RATE, **kw)
    narrow = AF.highpass_biquad(narrow, TELEPHONE_RATE, TELEPHONE_HIGHPASS_HZ)
    back = AF.resample(narrow, TELEPHONE_RATE, sample_rate, **kw)
    out = np.zeros(len(x), dtype=np.float32)
    n = min(len(x), back.numel())
    out[:n] = back[:n].numpy()
    return out


@functools.lru_cache(maxsize=4)
def rir_bank(
    seed: int, sample_rate: int = SAMPLE_RATE, size: int = RIR_BANK
) -> tuple[np.ndarray, ...]:
    """``size`` room impulse responses ``(1, L)`` from lhotse's FastRandomRIRGenerator,
    a function of ``seed`` (cached per process)."""
    from lhotse.augmentation.utils import FastRandomRIRGenerator

    out = []
    # the generator seeds its numpy draws but also samples with torch's global generator
    # (Tensor.multinomial): seed that too, in a fork that leaves it as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(size):
            gen = FastRandomRIRGenerator(
                sr=sample_rate, room_seed=seed * 7919 + i, source_seed=seed * 7919 + i + 1
            )
            out.append(np.asarray(gen(nsource=1), dtype=np.float32))
    return tuple(out)


def reverb(x: np.ndarray, rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` through room response ``rir`` ``(1, L)`` with lhotse's ReverbWithImpulseResponse
    (aligned to the direct path, same length and power as ``x``)."""
    from lhotse.augmentation import ReverbWithImpulseResponse

    tf = ReverbWithImpulseResponse(rir_generator=lambda nsource=1: rir)
    return tf(np.asarray(x, dtype=np.float32)[None], sample_rate)[0]


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    return (x * 10 ** (gain_db / 20)).astype(np.float32)


def draw(cfg: AugmentConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Which augmentations one utterance gets and their parameters (empty: none)."""
    plan: dict[str, Any] = {}
    if rng.random() < cfg.speed_prob:
        plan["speed"] = float(cfg.speed_factors[int(rng.integers(len(cfg.speed_factors)))])
    if rng.random() < cfg.reverb_prob:
        plan["reverb"] = int(rng.integers(RIR_BANK))
    if rng.random() < cfg.noise_prob:
        kind = "babble" if rng.random() < cfg.babble_share else "coloured"
        plan["noise"] = {
            "kind": kind,
            "exponent": float(NOISE_EXPONENTS[int(rng.integers(len(NOISE_EXPONENTS)))]),
            "snr_db": float(rng.uniform(*cfg.snr_range)),
        }
    if rng.random() < cfg.telephone_prob:
        plan["telephone"] = True
    if rng.random() < cfg.gain_prob:
        plan["gain_db"] = float(rng.uniform(*cfg.gain_db_range))
    return plan


def augment_audio(
    cut: Any,
    plan: dict[str, Any],
    rng: np.random.Generator,
    babble_sources: Sequence[np.ndarray] = (),
    seed: int = 0,
) -> np.ndarray:
    """The samples ``(S,)`` float32 of lhotse ``cut`` with the augmentations of ``plan``
    (see :func:`draw`) applied; ``babble_sources``: other utterances' samples; ``seed``: of
    the room-response bank."""
    if cut.has_features:
        cut = cut.drop_features()
    if "speed" in plan and plan["speed"] != 1.0:
        cut = cut.perturb_speed(plan["speed"])
    x = np.asarray(cut.load_audio(), dtype=np.float32)
    x = x.mean(axis=0) if x.ndim == 2 else x  # (C, S) -> (S,)
    if "reverb" in plan:
        sr = int(cut.sampling_rate)
        x = reverb(x, rir_bank(seed, sr)[plan["reverb"]], sr)
    if "noise" in plan:
        spec = plan["noise"]
        noise = babble(babble_sources, len(x), rng) if spec["kind"] == "babble" else None
        if noise is None:  # coloured, or babble without other utterances
            noise = coloured_noise(len(x), spec["exponent"], rng)
        x = add_noise(x, noise, spec["snr_db"])
    if plan.get("telephone"):
        x = telephone(x, int(cut.sampling_rate))
    if "gain_db" in plan:
        x = apply_gain(x, plan["gain_db"])
    return x


class WaveformAugment:
    """Features of a training mini-batch with :class:`AugmentConfig` augmentation.

    ``features(cuts, epoch)`` -> list of ``(T_i, 80)`` float32 tensors, in the order of
    ``cuts``: stored features for utterances that draw nothing, fbank of the augmented audio
    for the others.
    """

    def __init__(self, cfg: AugmentConfig, num_mel_bins: int = 80) -> None:
        self.cfg = cfg
        self.num_mel_bins = num_mel_bins
        self._fbank = None
        if cfg.reverb_prob > 0:  # made here, so forked data-loader workers inherit it
            rir_bank(cfg.seed)

    def _extract(self, x: np.ndarray, sample_rate: int) -> Tensor:
        if self._fbank is None:
            from lhotse import Fbank, FbankConfig

            self._fbank = Fbank(FbankConfig(num_mel_bins=self.num_mel_bins))
        feats = self._fbank.extract(x.astype(np.float32, copy=False), sample_rate)
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    def features(self, cuts: Sequence[Any], epoch: int = 0) -> list[Tensor]:
        rngs = [utterance_rng(self.cfg, epoch, c.id) for c in cuts]
        plans = [draw(self.cfg, r) for r in rngs]
        need_babble = any(p.get("noise", {}).get("kind") == "babble" for p in plans)
        clean: dict[int, np.ndarray] = {}
        if need_babble and len(cuts) > 1:
            clean = {i: np.asarray(c.load_audio(), dtype=np.float32)[0] for i, c in enumerate(cuts)}
        out = []
        for i, (cut, plan, rng) in enumerate(zip(cuts, plans, rngs, strict=True)):
            if not plan:
                out.append(torch.from_numpy(cut.load_features()).float())
                continue
            others = [a for j, a in clean.items() if j != i]
            x = augment_audio(cut, plan, rng, others, self.cfg.seed)
            out.append(self._extract(x, int(cut.sampling_rate)))
        return out
