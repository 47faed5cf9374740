"""Speech quality measures: WADA-SNR (blind), stem SNR, DNSMOS, clipping, loudness.

WADA-SNR (Kim & Stern, 2008) models clean speech amplitudes as Gamma-distributed (shape 0.4)
and noise as Gaussian; the statistic G = log(mean|x|) − mean(log|x|) rises monotonically with
the SNR. Our G-to-SNR table is computed here by simulating exactly that model with a
fixed seed, then the measured G is interpolated in it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

RATE = 16000


@lru_cache(maxsize=1)
def _wada_table() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    n = 200_000
    speech = rng.gamma(0.4, 1.0, n) * rng.choice([-1.0, 1.0], n)
    speech /= np.sqrt(np.mean(speech ** 2))
    noise = rng.standard_normal(n)
    snrs = np.arange(-20.0, 101.0, 1.0)
    gs = []
    for snr in snrs:
        x = speech + noise * 10 ** (-snr / 20)
        a = np.abs(x) + 1e-20
        gs.append(np.log(np.mean(a)) - np.mean(np.log(a)))
    return snrs, np.maximum.accumulate(np.array(gs))  # monotone despite sampling noise at high SNR


def wada_snr(x: np.ndarray) -> float:
    """Blind SNR estimate (dB) of a speech signal, clamped to [-20, 100]."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.abs(x) > 0]
    if len(x) < RATE // 10:
        return float("nan")
    x = x / (np.max(np.abs(x)) + 1e-12)
    a = np.abs(x) + 1e-20
    g = np.log(np.mean(a)) - np.mean(np.log(a))
    snrs, gs = _wada_table()
    # G rises with the SNR (Gaussian noise has the smallest G): interpolate in the table
    return float(np.interp(g, gs, snrs))


def stem_snr(vocals: np.ndarray, residual: np.ndarray) -> float:
    ev = float(np.sum(vocals.astype(np.float64) ** 2))
    er = float(np.sum(residual.astype(np.float64) ** 2))
    return float(10 * np.log10((ev + 1e-12) / (er + 1e-12)))


def clipping_ratio(x: np.ndarray, level: float = 0.999) -> float:
    return float(np.mean(np.abs(x) >= level)) if len(x) else 0.0


def loudness_lufs(x: np.ndarray, rate: int = RATE) -> float:
    import pyloudnorm as pyln
    if len(x) < int(0.4 * rate):
        return float("nan")
    return float(pyln.Meter(rate).integrated_loudness(x.astype(np.float64)))


def normalise_loudness(x: np.ndarray, target_lufs: float, rate: int = RATE, peak: float = 0.95) -> np.ndarray:
    """Scale to ``target_lufs`` without letting the peak exceed ``peak``."""
    current = loudness_lufs(x, rate)
    if not np.isfinite(current):
        return x
    y = x * 10 ** ((target_lufs - current) / 20)
    top = float(np.max(np.abs(y))) if len(y) else 0.0
    if top > peak:
        y = y * (peak / top)
    return y.astype(np.float32)


def dnsmos(x: np.ndarray, rate: int = RATE) -> dict:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 from the ONNX models shipped in ``speechmos``."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from speechmos import dnsmos as _d
        r = _d.run(np.clip(x.astype(np.float32), -1, 1), sr=rate)
    return {"sig": round(float(r["sig_mos"]), 4), "bak": round(float(r["bak_mos"]), 4),
            "ovrl": round(float(r["ovrl_mos"]), 4), "p808": round(float(r["p808_mos"]), 4)}
