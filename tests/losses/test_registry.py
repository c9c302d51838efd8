"""The loss records: contents, lookups, parameter introspection, error messages, registering a new loss."""

from __future__ import annotations

import math

import pytest
import torch

import kdgraph.losses as L
from kdgraph.losses import (PAIR_KINDS, REQUIRED, LossKind, Needs, UnknownLossError, get_loss, losses,
                            register_loss)
from kdgraph.losses import registry


def names(kind) -> set[str]:
    return {r.name for r in losses(kind)}


def test_record_contents() -> None:
    assert {"mse", "l1", "cosine", "logsum", "logsum_corr", "pkt", "pkt_combined"} <= names(PAIR_KINDS)
    assert names("logit") == {"kl", "ce_soft", "dkd", "dist"}
    assert get_loss("pkt").fn is L.pkt_cosine
    assert get_loss("pkt_combined").fn is L.pkt_combined
    assert get_loss("kl").fn is L.kl_div
    assert not names(PAIR_KINDS) & names("logit")
    assert get_loss("pkt").kind is LossKind.RELATIONAL and get_loss("pkt").needs is Needs.ANY
    assert get_loss("mse").kind is LossKind.FEATURE and get_loss("mse").needs is Needs.SAME_SHAPE
    assert get_loss("kl").layouts == {"vector"} and get_loss("mse").layouts == {"map", "tokens", "vector"}
    assert get_loss("mse").function == "kdgraph.losses.feature.mse"
    assert get_loss("mse").summary.startswith("Mean squared error: ``L = mean_{b,k} (s[b,k] - t[b,k])^2``")


def test_get_loss() -> None:
    assert get_loss("logsum", PAIR_KINDS).fn is L.logsum
    assert get_loss("kl", kind="logit").fn is L.kl_div
    with pytest.raises(UnknownLossError):
        get_loss("kl", PAIR_KINDS)  # a logit loss is not a feature loss
    with pytest.raises(ValueError):
        get_loss("mse", kind="bogus")  # type: ignore[arg-type]


def test_unknown_loss_error_message() -> None:
    with pytest.raises(KeyError) as info:
        get_loss("logsun", PAIR_KINDS)
    err = info.value
    assert isinstance(err, UnknownLossError)
    assert err.name == "logsun" and err.suggestion == "logsum"
    assert err.choices == sorted(names(PAIR_KINDS))
    msg = str(err)
    assert msg.startswith("unknown feature loss 'logsun'; valid names: ")
    assert "did you mean 'logsum'?" in msg
    for name in names(PAIR_KINDS):
        assert name in msg
    assert not msg.startswith('"')  # not KeyError's repr-quoting
    assert str(pytest.raises(UnknownLossError, get_loss, "kld", "logit").value) == (
        "unknown logit loss 'kld'; valid names: ce_soft, dist, dkd, kl; did you mean 'kl'?")


def test_unknown_loss_without_close_match() -> None:
    err = UnknownLossError("zzzzzzzz", ["mse", "l1"])
    assert err.suggestion is None and "did you mean" not in str(err)
    assert "l1, mse" in str(err)


def test_loss_params() -> None:
    assert list(get_loss("logsum").params) == ["alpha"]
    assert get_loss("logsum").params["alpha"] == 4.0
    assert list(get_loss("logsum_corr").params) == ["alpha", "eps"]
    assert get_loss("mse").params == {}
    assert list(get_loss("kl").params) == ["temperature", "t_squared"]
    assert get_loss("kl", kind="logit").params["temperature"] == 4.0
    assert list(get_loss("pkt").params) == ["eps"]
    with pytest.raises(UnknownLossError):
        get_loss("nope")


def test_every_loss_callable_with_its_params() -> None:
    """Every record called as the graph calls it: its tensors (maps for map-only losses, two per model with several
    taps), its module built from the shapes with the build inputs, and the step inputs."""
    from kdgraph.align import FeatureShape

    for record in losses():
        maps = "vector" not in record.layouts
        size = (4, 3, 4, 4) if maps else (4, 3)
        shape = FeatureShape(size[1:], "map" if maps else "vector")
        n = 1 if not record.several else 2
        s, t = [torch.randn(size) for _ in range(n)], [torch.randn(size) for _ in range(n)]
        given = {"num_data": 16, "seed": 0, "teacher_batchnorm": [torch.nn.BatchNorm2d(3)] * n,
                 "labels": torch.arange(4) % 3, "index": torch.arange(4),
                 "targets": [{"boxes": torch.tensor([[1.0, 2.0, 9.0, 12.0]])}] * 4, "image_sizes": [(16, 16)] * 4}
        inputs = {param: given[name] for name, param in record.inputs.items()}
        fn_params, module_params = record.split(record.defaults())
        extra = {}
        if record.module is not None:
            shapes = ([shape] * n, [shape] * n) if record.several else (shape, shape)
            build = {k: v for k, v in inputs.items() if k in ("num_data", "seed", "teacher_batchnorm")}
            extra["module"] = record.module(*shapes, **module_params, **build)
        step = {k: v for k, v in inputs.items() if k in ("target", "index", "num_data", "targets", "image_sizes")}
        tensors = (*s, *t) if record.spread else (s, t) if record.several else (s[0], t[0])
        out = record.fn(*tensors, **fn_params, **extra, **step)
        assert out.ndim == 0 and math.isfinite(out.item()), record.name


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
    assert get_loss("ce_soft", "logit").fn(zs, zt).item() == pytest.approx(T * T * total / 2, rel=1e-12)


def test_public_api() -> None:
    for name in L.__all__:
        assert hasattr(L, name), name
    for name in ("mse", "l1", "cosine", "logsum", "logsum_corr", "pkt_cosine", "pkt_combined"):
        assert name in L.__all__
    for name in ("cross_entropy", "kl_div", "get_loss", "losses", "register_loss", "UnknownLossError"):
        assert name in L.__all__


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations in a test go to a copy of the table."""
    monkeypatch.setattr(registry, "_RECORDS", dict(registry._RECORDS))


def test_register_a_plain_function(scratch_registry) -> None:
    def gap_mse(s, t, *, beta, scale: float = 2.0):
        """Toy loss: ``scale * mean (s - t)^2`` of pooled maps."""
        return scale * (s.mean((2, 3)) - t.mean((2, 3))).pow(2).mean()

    assert register_loss("toy", kind="relational", needs="vectors", layouts=("map",))(gap_mse) is gap_mse
    record = get_loss("toy", PAIR_KINDS)
    assert record.fn is gap_mse and record.needs is Needs.VECTORS and record.layouts == {"map"}
    assert record.params == {"beta": REQUIRED, "scale": 2.0} and record.defaults() == {"scale": 2.0}
    assert record.summary == "Toy loss: ``scale * mean (s - t)^2`` of pooled maps."
    assert "toy" in names(PAIR_KINDS)


def test_register_refuses_what_a_spec_cannot_call(scratch_registry) -> None:
    with pytest.raises(TypeError, match="student and the teacher tensor first"):
        register_loss("one", kind="feature")(lambda s: s.sum())
    with pytest.raises(TypeError, match="student and the teacher tensor first"):
        register_loss("three", kind="feature")(lambda s, t, u: s.sum())
    with pytest.raises(TypeError, match=r"\*\*kwargs"):
        register_loss("star", kind="feature")(lambda s, t, **kwargs: s.sum())
    with pytest.raises(ValueError, match="layouts"):
        register_loss("bad", kind="feature", layouts=("image",))
    with pytest.raises(ValueError, match="inputs"):
        register_loss("bad", kind="feature", inputs=("epoch",))
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("mse", kind="feature")(lambda s, t: s.sum())


def test_module_and_inputs_are_not_spec_parameters(scratch_registry) -> None:
    def crd_like(s, t, *, module, index, num_data, temperature: float = 0.07):
        return s.sum()

    def heads(s, t, *, num_data, seed, dim: int = 128, temperature: float = 0.07):
        return torch.nn.Identity()

    register_loss("crd_like", kind="relational", needs="vectors", module=heads,
                  inputs=("index", "num_data", "seed"))(crd_like)
    record = get_loss("crd_like")
    assert record.params == {"temperature": 0.07, "dim": 128}
    assert record.inputs == {"index": "index", "num_data": "num_data", "seed": "seed"}
    assert record.split({"dim": 64, "temperature": 0.1}) == ({"temperature": 0.1}, {"dim": 64, "temperature": 0.1})
    with pytest.raises(ValueError, match="two defaults"):
        register_loss("crd_bad", kind="relational", module=lambda s, t, *, temperature=1.0: heads)(crd_like)
    with pytest.raises(ValueError, match="exist only at a step"):
        register_loss("crd_bad", kind="relational", module=lambda s, t, *, index: heads, inputs=("index",))(crd_like)
    with pytest.raises(ValueError, match="only a module factory"):
        register_loss("crd_bad", kind="relational", inputs=("seed",))(lambda s, t, *, seed: s.sum())

    def dkd_like(student_logits, teacher_logits, *, beta: float = 8.0, temperature: float = 4.0, target=None):
        return student_logits.sum()

    register_loss("dkd_like", kind="logit", inputs={"labels": "target"})(dkd_like)
    assert get_loss("dkd_like").params == {"beta": 8.0, "temperature": 4.0}


def test_several_taps_take_two_sequences_or_all_the_tensors(scratch_registry) -> None:
    def fsp_like(s1, s2, t1, t2):
        return s1.sum()

    def review_like(student, teacher, *, levels=(4, 2, 1)):
        return student[0].sum()

    register_loss("fsp_like", kind="feature", taps=2)(fsp_like)
    register_loss("review_like", kind="feature", taps=4)(review_like)
    register_loss("review_many", kind="feature", taps="many")(review_like)
    assert get_loss("fsp_like").params == {} and get_loss("review_like").params == {"levels": (4, 2, 1)}
    assert get_loss("fsp_like").spread and not get_loss("review_like").spread and get_loss("review_many").several
    with pytest.raises(ValueError, match="taps must be"):
        register_loss("bad", kind="feature", taps=0)
    with pytest.raises(ValueError, match="no taps or module"):
        register_loss("bad", kind="logit", taps=2)


CATALOGUE = {  # name: (kind, needs, taps, has a module, run inputs)
    "dkd": ("logit", "same-shape", 1, False, {"labels"}),
    "dist": ("logit", "same-shape", 1, False, set()),
    "nst": ("feature", "any", 1, False, set()),  # it pools two grids to one itself (grid: pool), as RepDistiller
    "at": ("feature", "any", 1, False, set()),
    "fsp": ("feature", "same-width", 2, False, set()),
    "ab": ("feature", "same-shape", 1, False, set()),
    "ofd": ("feature", "same-grid", 1, True, {"teacher_batchnorm"}),
    "ft": ("feature", "same-grid", 1, True, set()),
    "mgd": ("feature", "same-shape", 1, True, {"seed"}),
    "reviewkd": ("feature", "any", "many", True, set()),
    "vid": ("feature", "same-grid", 1, True, set()),
    "ickd": ("feature", "same-width", 1, False, set()),
    "sp": ("relational", "any", 1, False, set()),
    "cc": ("relational", "vectors", 1, True, set()),
    "rkd": ("relational", "vectors", 1, False, set()),
    "crd": ("relational", "vectors", 1, True, {"index", "num_data", "seed"}),
    "cwd": ("feature", "same-shape", 1, False, set()),
    "pkd": ("feature", "same-shape", 1, False, set()),
    "fgd": ("feature", "same-shape", 1, True, {"targets", "image_sizes"}),
    "pixel_kd": ("feature", "same-shape", 1, False, {"labels"}),
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_catalogue_method_is_a_record_saying_what_it_needs(name) -> None:
    kind, needs, taps, module, inputs = CATALOGUE[name]
    record = get_loss(name)
    assert (record.kind.value, record.needs.value, record.taps) == (kind, needs, taps)
    assert (record.module is not None, set(record.inputs)) == (module, inputs)
    assert record.summary and "module" not in record.params and not set(record.inputs.values()) & set(record.params)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("record", losses(), ids=lambda r: r.name)
def test_every_loss_has_its_test_file_its_docs_and_its_reference_row(record) -> None:
    """Adding a loss is one record plus its test and its docs line: a record without them fails here."""
    from kdgraph.spec.reference import loss_reference

    module = record.function.rsplit(".", 2)[-2]
    test_file = ROOT / "tests" / "losses" / f"test_{module}.py"
    assert test_file.exists(), f"{record.name}: no {test_file.relative_to(ROOT)} recomputing it"
    assert "float64" in test_file.read_text(), f"{test_file.name} recomputes nothing in float64"
    assert f"`{record.name}`" in (ROOT / "docs" / "losses.md").read_text(), f"docs/losses.md lacks `{record.name}`"
    row = next(line for line in loss_reference() if line.startswith(f"| `{record.name}` |"))
    assert record.summary.split("``")[0].replace("|", "\\|") in row
    if record.name in CATALOGUE:  # the method's paper is cited in the line `kdgraph schema` prints
        assert any(year in record.summary for year in ("2017", "2018", "2019", "2020", "2021", "2022")), record.summary
