"""Synthetic sequence-length distributions for the three corpora the papers evaluate on.

Why: the planner's gains depend on the *shape* of the length distribution (how many sequences are short, how
many tokens the long tail holds), and benchmarks and tests need batches with that shape on any machine, with
no data set to download. Each corpus is modelled as a mixture with the statistics it must reproduce written
down as data, so the generator is checked against its targets rather than tuned by eye:

- a **body** of sequences <= ``body_max`` tokens (8K): a log-normal truncated to ``(0, body_max]``;
- one or more **tail bands** ``(lo, hi]``, each with a target *fraction of sequences* and a target *share of
  all tokens*; inside a band lengths follow a truncated power law ``p(x) ∝ x^-(alpha+1)`` whose exponent is
  solved so that the band's mean length gives exactly its token share.

The token shares fix the overall mean ``M = body_fraction · body_mean / (1 − Σ band shares)``; each band's mean
is then ``share · M / fraction``. Lengths are continuous draws rounded up to integers (>= 1), which adds
about half a token to every mean (negligible at these lengths).

Targets (fractions of sequences, shares of tokens), and where they come from:

**GitHub** — from the HelixTrain proposal §1.5 (quoting InfiniPipe, Wang et al. 2025, Fig. 4 / DESIGN §11):
  91.5% of sequences <= 8K; 0.6% > 64K, holding 21.6% of tokens. Published facts above; *chosen* here (not
  published): the (8K, 64K] band holds 36% of tokens, the body is log-normal with median 1,200 tokens and
  sigma 1.3 (source files are longer than web pages), and lengths are capped at 1M (2^20) tokens.

**CommonCrawl** — approximate, read off the FlexSP paper's (Wang et al., ASPLOS'25) sequence-length
  histogram: mostly short web pages with a thin long tail. Targets chosen: 99.0% <= 8K; 0.05% > 64K holding
  4% of tokens; the (8K, 64K] band (0.95% of sequences) holds 12% of tokens (so 16% of tokens sit above 8K);
  body log-normal median 600 tokens, sigma 1.1; cap 256K (2^18). These are approximate by construction.

**Wikipedia** — measured on ``shared/data/wikipedia-lengths.txt`` (1,000,000 articles, token counts):
  median 347, mean 1,013.6, max 1,823,777 tokens; p90 2,112, p99 10,919;
  98.40% <= 8K, and the 1.60% above 8K hold 27.46% of all tokens;
  0.130% > 32K, holding 7.55% of tokens; 0.028% > 64K, holding 3.08% of tokens.
  Modelled as: body (<= 8K, 98.401%) log-normal median 344, sigma 1.40 (fitted so the truncated body has the
  measured body median 337 and mean 747.2); band (8K, 32K]: 1.469% of sequences, 19.91% of tokens;
  band (32K, 1,823,777]: 0.130% of sequences, 7.55% of tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

DATASETS: tuple[str, ...] = ("github", "commoncrawl", "wikipedia")


@dataclass(frozen=True, slots=True)
class LengthBand:
    """Sequences with ``lo < length <= hi``."""

    lo: int
    """Exclusive lower bound (tokens)."""
    hi: int
    """Inclusive upper bound (tokens)."""
    fraction: float
    """Target fraction of all sequences that fall in this band."""
    token_share: float
    """Target fraction of all tokens held by this band."""


@dataclass(frozen=True, slots=True)
class LengthProfile:
    """A corpus' length distribution: truncated log-normal body plus power-law tail bands."""

    name: str
    body_median: float
    """Median of the log-normal before truncation (tokens)."""
    body_sigma: float
    """Sigma of the log-normal (natural log)."""
    bands: tuple[LengthBand, ...]
    body_max: int = 8192
    """Largest body length; the first band must start here."""

    @property
    def body_fraction(self) -> float:
        return 1.0 - sum(b.fraction for b in self.bands)


PROFILES: MappingProxyType[str, LengthProfile] = MappingProxyType(
    {
        "github": LengthProfile(
            name="github",
            body_median=1200.0,
            body_sigma=1.3,
            bands=(
                LengthBand(lo=8192, hi=65536, fraction=0.079, token_share=0.36),
                LengthBand(lo=65536, hi=1 << 20, fraction=0.006, token_share=0.216),
            ),
        ),
        "commoncrawl": LengthProfile(
            name="commoncrawl",
            body_median=600.0,
            body_sigma=1.1,
            bands=(
                LengthBand(lo=8192, hi=65536, fraction=0.0095, token_share=0.12),
                LengthBand(lo=65536, hi=1 << 18, fraction=0.0005, token_share=0.04),
            ),
        ),
        "wikipedia": LengthProfile(
            name="wikipedia",
            body_median=344.0,
            body_sigma=1.40,
            bands=(
                LengthBand(lo=8192, hi=32768, fraction=0.01469, token_share=0.1991),
                LengthBand(lo=32768, hi=1_823_777, fraction=0.00130, token_share=0.0755),
            ),
        ),
    }
)


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def body_mean(profile: LengthProfile) -> float:
    """Mean of the log-normal body truncated to ``(0, body_max]``: E[X | X <= b]."""
    mu, s = math.log(profile.body_median), profile.body_sigma
    log_b = math.log(profile.body_max)
    return math.exp(mu + s * s / 2) * _phi((log_b - mu - s * s) / s) / _phi((log_b - mu) / s)


def _power_law_mean(lo: float, hi: float, alpha: float) -> float:
    """Mean of p(x) ∝ x^-(alpha+1) on [lo, hi]; alpha = 0 and 1 are the log-uniform and 1/x² limits."""
    if abs(alpha) < 1e-9:
        return (hi - lo) / math.log(hi / lo)
    if abs(alpha - 1.0) < 1e-9:
        return math.log(hi / lo) / (1.0 / lo - 1.0 / hi)
    norm = lo**-alpha - hi**-alpha
    return alpha / norm * (hi ** (1.0 - alpha) - lo ** (1.0 - alpha)) / (1.0 - alpha)


def _solve_alpha(lo: float, hi: float, mean: float) -> float:
    """Exponent whose truncated power law on [lo, hi] has the given mean (the mean decreases with alpha)."""
    if not lo < mean < hi:
        raise ValueError(f"band ({lo:.0f}, {hi:.0f}] cannot have mean {mean:.0f}: check its fraction and token share")
    a_lo, a_hi = -30.0, 30.0
    for _ in range(200):
        mid = (a_lo + a_hi) / 2
        if _power_law_mean(lo, hi, mid) > mean:
            a_lo = mid
        else:
            a_hi = mid
    return (a_lo + a_hi) / 2


def band_alphas(profile: LengthProfile) -> tuple[float, ...]:
    """Power-law exponent of each band, derived from the profile's token-share targets."""
    overall_mean = profile.body_fraction * body_mean(profile) / (1.0 - sum(b.token_share for b in profile.bands))
    return tuple(_solve_alpha(b.lo, b.hi, b.token_share * overall_mean / b.fraction) for b in profile.bands)


def _sample_body(profile: LengthProfile, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rejection sampling of the truncated log-normal (a few % of draws are rejected)."""
    mu = math.log(profile.body_median)
    out = np.empty(0, dtype=np.float64)
    while out.size < n:
        draw = rng.lognormal(mean=mu, sigma=profile.body_sigma, size=max(2 * (n - out.size), 64))
        out = np.concatenate([out, draw[draw <= profile.body_max]])
    return out[:n]


def _sample_band(band: LengthBand, alpha: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF sampling of the truncated power law on [lo, hi]."""
    u = rng.random(n)
    lo, hi = float(band.lo), float(band.hi)
    if abs(alpha) < 1e-9:
        return lo * (hi / lo) ** u
    return (lo**-alpha - u * (lo**-alpha - hi**-alpha)) ** (-1.0 / alpha)


def sample_synthetic(dataset: str, n: int, rng: np.random.Generator) -> list[int]:
    """Draw ``n`` sequence lengths (ints >= 1) from the named corpus model, in random order.

    Deterministic given the state of ``rng``.
    """
    if dataset not in PROFILES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    profile = PROFILES[dataset]
    alphas = band_alphas(profile)
    probs = np.array([profile.body_fraction, *(b.fraction for b in profile.bands)])
    which = rng.choice(len(probs), size=n, p=probs / probs.sum())
    lengths = np.empty(n, dtype=np.float64)
    body = which == 0
    lengths[body] = _sample_body(profile, int(body.sum()), rng)
    for k, (band, alpha) in enumerate(zip(profile.bands, alphas, strict=True), start=1):
        mask = which == k
        lengths[mask] = np.clip(np.ceil(_sample_band(band, alpha, int(mask.sum()), rng)), band.lo + 1, band.hi)
    lengths[body] = np.clip(np.ceil(lengths[body]), 1, profile.body_max)
    return [int(x) for x in lengths]
