"""Per-image draws: a function of (seed, view, image) alone, with the distributions they promise."""

import numpy as np
import pytest
import torch
from scipy import stats

from kdgraph.data.draws import permutation, symmetric_beta, uniforms, view_key


def test_a_row_depends_only_on_the_key_and_its_image():
    key = view_key(3, 7, 1)
    idx = torch.tensor([5, 900, 12, 5, 40_000])
    u = uniforms(key, idx, 4)
    assert u.shape == (5, 4) and u.dtype == torch.float64
    assert torch.equal(u[0], u[3])  # the same image twice: the same numbers
    assert torch.equal(uniforms(key, idx.flip(0), 4), u.flip(0))  # order and batch do not matter
    assert torch.equal(uniforms(key, idx[1:2], 4), u[1:2])
    assert bool(((u > 0) & (u < 1)).all())
    assert not torch.equal(uniforms(view_key(3, 8, 1), idx, 4), u)  # another view
    assert not torch.equal(uniforms(view_key(4, 7, 1), idx, 4), u)  # another seed
    assert not torch.equal(uniforms(view_key(3, 7, 2), idx, 4), u)  # another stream


def test_uniforms_are_uniform_and_independent_across_columns_and_images():
    u = uniforms(view_key(0, 0), torch.arange(100_000), 3).numpy()
    for col in range(3):
        assert stats.kstest(u[:, col], "uniform").pvalue > 1e-3
    corr = np.corrcoef(np.concatenate([u[:-1], u[1:]], axis=1).T)  # columns, and neighbouring images
    assert np.abs(corr - np.eye(6)).max() < 0.02


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_symmetric_beta_follows_beta(alpha):
    b = symmetric_beta(view_key(1, 2), torch.arange(40_000), alpha).numpy()
    assert stats.kstest(b, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    idx = torch.tensor([3, 17])
    assert torch.equal(symmetric_beta(view_key(1, 2), idx, alpha), symmetric_beta(view_key(1, 2), idx, alpha))


def test_permutation_is_one_of_the_key():
    p = permutation(view_key(0, 5, 4), 1000)
    assert sorted(p.tolist()) == list(range(1000))
    assert torch.equal(p, permutation(view_key(0, 5, 4), 1000))
    assert not torch.equal(p, permutation(view_key(0, 6, 4), 1000))
