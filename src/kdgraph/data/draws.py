"""Per-image random numbers: a function of ``(seed, view, image index)`` alone.

A view of an image (its crop, flip, mixing partner and ratio) must not depend on the batch the image lands in, its
place there, the number of processes, or what was drawn before: then an online run, a teacher store written in
another order (``kdgraph teach``) and a data-parallel shard all see the same pixels. So nothing here keeps a state.

Construction. The scalar part ``(seed, view, *stream)`` is mixed into a 64-bit key by numpy's ``SeedSequence`` (as the
loader's epoch seed); image ``i``'s ``j``-th number (``j < n``) is output ``i·n + j + 1`` of a SplitMix64 generator
started at that key, ``mix64(key + (i·n + j + 1)·γ)`` with γ = 0x9E3779B97F4A7C15 (Steele, Lea and Flood 2014; it
passes BigCrush). One key per purpose (crop, mixing ratio, cutmix box) keeps each purpose's block per image fixed,
so no two purposes share numbers. Everything is computed vectorised in numpy ``uint64``, on the CPU, so the numbers
are the same on every device.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["view_key", "uniforms", "symmetric_beta", "permutation"]

_MASK64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_PROPOSALS = 16  # Marsaglia-Tsang proposals per gamma draw: all rejected with probability < 1e-20


def view_key(seed: int, view: int, *stream: int) -> int:
    """A 64-bit key mixed from ``(seed, view, *stream)`` (numpy ``SeedSequence``)."""
    words = [int(v) & _MASK64 for v in (seed, view, *stream)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)
    return int(state[0])


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on ``uint64`` (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _index(index: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    return np.asarray(index, dtype=np.int64).reshape(-1)


def uniforms(key: int, index: torch.Tensor | np.ndarray, n: int) -> torch.Tensor:
    """``(B, n)`` float64 numbers uniform in the open interval (0, 1) for the images ``index``: row ``b`` depends only on
    ``key`` and ``index[b]``."""
    idx = _index(index).astype(np.uint64)
    counter = idx[:, None] * np.uint64(n) + np.arange(1, n + 1, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        bits = _mix64(np.uint64(key) + counter * _GAMMA)
    return torch.from_numpy(((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53)


def _gamma(u: np.ndarray, shape: float) -> np.ndarray:
    """Gamma(``shape``, 1) draws by Marsaglia and Tsang (2000) from ``(B, 3·P + 1)`` uniforms: P proposals of a normal
    (Box-Muller) and an acceptance number, the first accepted one kept; below shape 1, Gamma(shape + 1)·U^(1/shape).
    In the (< 1e-20) case that all P proposals are rejected the draw is ``d``, the proposal of a zero normal."""
    boost = shape < 1
    d = (shape + 1 if boost else shape) - 1 / 3
    c = 1 / np.sqrt(9 * d)
    p = _PROPOSALS
    normal = np.sqrt(-2 * np.log(u[:, :p])) * np.cos(2 * np.pi * u[:, p:2 * p])
    v = (1 + c * normal) ** 3
    with np.errstate(invalid="ignore", divide="ignore"):
        accept = (v > 0) & (np.log(u[:, 2 * p:3 * p]) < 0.5 * normal ** 2 + d - d * v + d * np.log(v))
    first = np.argmax(accept, axis=1)
    rows = np.arange(len(u))
    g = np.where(accept[rows, first], d * v[rows, first], d)
    return g * u[:, 3 * p] ** (1 / shape) if boost else g


def symmetric_beta(key: int, index: torch.Tensor | np.ndarray, alpha: float) -> torch.Tensor:
    """One ``Beta(alpha, alpha)`` draw per image (float64, ``(B,)``), as ``X / (X + Y)`` of two gamma draws."""
    per = 3 * _PROPOSALS + 1
    u = uniforms(key, index, 2 * per).numpy()
    x, y = _gamma(u[:, :per], alpha), _gamma(u[:, per:], alpha)
    return torch.from_numpy(x / (x + y))


def permutation(key: int, n: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``key`` (``torch.randperm`` on a generator seeded with it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(key & ((1 << 63) - 1)))
