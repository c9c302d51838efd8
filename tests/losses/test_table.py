"""Name -> loss tables, parameter introspection and error messages."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import kdgraph.losses as L
from kdgraph.losses import FEATURE_LOSSES, LOGIT_LOSSES, UnknownLossError, get_loss, loss_params


def test_table_contents() -> None:
    assert set(FEATURE_LOSSES) == {"mse", "l1", "cosine", "logsum", "logsum_corr", "pkt", "pkt_combined"}
    assert set(LOGIT_LOSSES) == {"kl", "ce_soft"}
    assert FEATURE_LOSSES["pkt"] is L.pkt_cosine
    assert FEATURE_LOSSES["pkt_combined"] is L.pkt_combined
    assert LOGIT_LOSSES["kl"] is L.kl_div
    assert not set(FEATURE_LOSSES) & set(LOGIT_LOSSES)


def test_get_loss() -> None:
    assert get_loss("logsum") is L.logsum
    assert get_loss("kl", kind="logit") is L.kl_div
    with pytest.raises(UnknownLossError):
        get_loss("kl")  # a logit loss is not a feature loss
    with pytest.raises(ValueError):
        get_loss("mse", kind="bogus")  # type: ignore[arg-type]


def test_unknown_loss_error_message() -> None:
    with pytest.raises(KeyError) as info:
        get_loss("logsun")
    err = info.value
    assert isinstance(err, UnknownLossError)
    assert err.name == "logsun" and err.suggestion == "logsum"
    assert err.choices == sorted(FEATURE_LOSSES)
    msg = str(err)
    assert "did you mean 'logsum'?" in msg
    for name in FEATURE_LOSSES:
        assert name in msg
    assert not msg.startswith('"')  # not KeyError's repr-quoting


def test_unknown_loss_without_close_match() -> None:
    err = UnknownLossError("zzzzzzzz", ["mse", "l1"])
    assert err.suggestion is None and "did you mean" not in str(err)
    assert "l1, mse" in str(err)


def test_loss_params() -> None:
    p = loss_params("logsum")
    assert list(p) == ["alpha"]
    assert p["alpha"].default == 4.0
    assert list(loss_params("logsum_corr")) == ["alpha", "eps"]
    assert loss_params("mse") == {}
    assert list(loss_params("kl")) == ["temperature", "t_squared"]
    assert loss_params("kl", kind="logit")["temperature"].default == 4.0
    assert list(loss_params("pkt")) == ["eps"]
    assert all(isinstance(v, inspect.Parameter) for v in loss_params("ce_soft").values())
    with pytest.raises(UnknownLossError):
        loss_params("nope")


def test_every_loss_callable_with_its_params() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    for table in (FEATURE_LOSSES, LOGIT_LOSSES):
        for name, fn in table.items():
            kwargs = {k: v.default for k, v in loss_params(name).items()}
            out = fn(s, t, **kwargs)
            assert out.ndim == 0 and math.isfinite(out.item()), name


def test_ce_soft_definition() -> None:
    # -T^2 * mean_b sum_k softmax(zt/T) log softmax(zs/T), written with loops
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    zt = torch.tensor([[0.3, 0.1, 2.0], [1.0, 1.0, -2.0]], dtype=torch.float64)
    T = 4.0
    total = 0.0
    for b in range(2):
        es = [math.exp(v / T) for v in zs[b].tolist()]
        et = [math.exp(v / T) for v in zt[b].tolist()]
        for k in range(3):
            total -= et[k] / sum(et) * math.log(es[k] / sum(es))
    assert LOGIT_LOSSES["ce_soft"](zs, zt).item() == pytest.approx(T * T * total / 2, rel=1e-12)


def test_public_api() -> None:
    for name in L.__all__:
        assert hasattr(L, name), name
    for name in ("mse", "l1", "cosine", "logsum", "logsum_corr", "pkt_cosine", "pkt_combined"):
        assert name in L.__all__
    for name in ("cross_entropy", "kl_div", "get_loss", "loss_params", "UnknownLossError"):
        assert name in L.__all__
