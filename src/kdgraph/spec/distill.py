"""The spec sections of what is distilled: ``distill`` (the logits term and the feature pairs, each with its loss
checked against the loss records) and ``self_distill``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import (ConfigDict, Field, NonNegativeFloat, PositiveFloat, field_validator, model_serializer,
                      model_validator)

from kdgraph.spec.section import Section, short_form

__all__ = ["LossSpec", "LogitLossSpec", "PairSpec", "LogitsSpec", "DistillSpec", "SelfDistillSpec"]


def _loss_names(kinds: tuple[str, ...]) -> str:
    from kdgraph.losses import losses

    return ", ".join(f"`{r.name}`" for r in losses(kinds))


_WARMUP = ("Linear warm-up of this term: its weight is multiplied by min(epoch / warmup_epochs, 1), epochs counted "
           "from 1 (DKD, ReviewKD: 20). 0: no warm-up.")


class _LossChoice(Section):
    """A loss by name with its keyword parameters, checked against the loss's record (``kdgraph.losses``)."""

    model_config = ConfigDict(extra="allow")
    _kinds: ClassVar[tuple[str, ...]] = ()
    _own_keys: ClassVar[tuple[str, ...]] = ()  # parameters the enclosing section sets itself (logits: temperature)
    _dump_short: ClassVar[bool] = False
    name: str

    @model_validator(mode="after")
    def _known(self) -> "_LossChoice":
        from kdgraph.losses import REQUIRED, UnknownLossError, get_loss

        try:
            record = get_loss(self.name, self._kinds)
        except UnknownLossError as err:
            raise ValueError(str(err)) from None
        allowed = [k for k in record.params if k not in self._own_keys]
        for key in self.params:
            if key in self._own_keys:
                raise ValueError(f"loss {self.name!r}: {key} is set by its own key next to `loss:`, not inside it")
            if key not in allowed:
                valid = ", ".join(allowed) or "none"
                raise ValueError(f"loss {self.name!r} has no parameter {key!r} (valid: {valid})")
        missing = [k for k in allowed if record.params[k] is REQUIRED and k not in self.params]
        if missing:
            raise ValueError(f"loss {self.name!r} needs {', '.join(missing)}: write loss: "
                             f"{{name: {self.name}, {missing[0]}: ...}}")
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The keyword parameters given (the loss's own defaults apply to the rest)."""
        return dict(self.model_extra or {})

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        """``{name: kl}`` is dumped as it was written before it was a mapping (``kl``) where the section says so,
        so the spec.yaml of a run made then compares equal when it is resumed."""
        data = handler(self)
        return self.name if self._dump_short and not self.params else data


class LossSpec(_LossChoice):
    """A pair's loss by name with its keyword parameters (`{name: logsum, alpha: 4}`; every loss: Losses, below)."""

    _kinds: ClassVar[tuple[str, ...]] = ("feature", "relational")
    name: str = Field(description=f"A feature or relational loss: {_loss_names(('feature', 'relational'))}.")


class LogitLossSpec(_LossChoice):
    """The logits term's loss by name with its keyword parameters (`{name: kl, t_squared: false}`)."""

    _kinds: ClassVar[tuple[str, ...]] = ("logit",)
    _own_keys: ClassVar[tuple[str, ...]] = ("temperature",)
    _dump_short: ClassVar[bool] = True  # `loss: kl` was a plain name before logit losses had records
    name: str = Field(description=f"A logit loss: {_loss_names(('logit',))}.")


class PairSpec(Section):
    """One student layer matched to one teacher layer (or, for a loss over several taps, lists of them)."""

    teacher: Union[str, list[str]] = Field(
        description="Teacher layer name, as `kdgraph inspect` prints it; a list for a loss over several taps per "
        "model (`fsp`, `reviewkd`), matched one to one with `student`.")
    student: Union[str, list[str]] = Field(description="Student layer name, as `kdgraph inspect` prints it (a list "
                                           "with `teacher`'s).")
    name: Optional[str] = Field(default=None, description="Name for stages and metrics (default pair:STUDENT->TEACHER).")
    teacher_model: Optional[str] = Field(
        default=None, description="Which of `teachers:` this pair reads (needed when there are several)."
    )
    projector: Union[str, dict[str, Any]] = Field(
        default="auto", description="`auto`, `none`, `identity`, `linear`, `conv1x1`, `prune`, or `{name: mlp, hidden: "
        "[...]}`; checked (name and options) when the spec loads."
    )
    normalize: Union[str, dict[str, Any]] = Field(
        default="none", description="`none`, `bn`, `l2` or `layernorm` (or `{name: bn, eps: 1e-4}`).")
    pool: Optional[Literal["gap", "tokens-mean", "cls"]] = Field(default=None, description="Pool both features first.")
    resize: Literal["bilinear", "nearest", "avgpool"] = Field(
        default="bilinear", description="How a student map is resized to the teacher's spatial size."
    )
    prune_criterion: Literal["l1", "l2"] = Field(
        default="l1", description="`projector: prune`: keep the teacher filters with the largest L1 (or L2) norm."
    )
    loss: LossSpec = Field(default_factory=lambda: LossSpec(name="mse"), description="Feature loss.")
    weight: NonNegativeFloat = Field(default=1.0, description="Weight of this term in the total loss.")
    warmup_epochs: NonNegativeFloat = Field(default=0.0, description=_WARMUP)

    _loss_named = short_form("loss")

    @model_validator(mode="after")
    def _taps_fit_the_loss(self) -> "PairSpec":
        from kdgraph.losses import MANY, get_loss

        record = get_loss(self.loss.name)
        s, t = self.student_taps, self.teacher_taps
        lists = isinstance(self.student, list) or isinstance(self.teacher, list)
        if not record.several and lists:
            raise ValueError(f"loss {record.name!r} compares one layer per model; give `student` and `teacher` as "
                             "single names, or use a loss over several taps")
        if record.several and not (isinstance(self.student, list) and isinstance(self.teacher, list)):
            count = "one or more" if record.taps == MANY else str(record.taps)
            raise ValueError(f"loss {record.name!r} reads {count} layers per model: give `student` and `teacher` as "
                             "lists, e.g. {student: [block1, block2], teacher: [layer1, layer2]}")
        if len(s) != len(t) or not s or (record.taps != MANY and len(s) != record.taps):
            want = f"{record.taps} each" if record.taps != MANY else "as many teacher layers as student layers"
            raise ValueError(f"loss {record.name!r} needs {want}; got {len(s)} student and {len(t)} teacher layers")
        return self

    @property
    def student_taps(self) -> list[str]:
        """The student layers, as a list (one for a single-tap loss)."""
        return list(self.student) if isinstance(self.student, list) else [self.student]

    @property
    def teacher_taps(self) -> list[str]:
        """The teacher layers, as a list."""
        return list(self.teacher) if isinstance(self.teacher, list) else [self.teacher]

    @field_validator("projector")
    @classmethod
    def _projector_known(cls, v: Any) -> Any:
        from kdgraph.align.projectors import parse_projector

        parse_projector(v)  # the planner's own check, now: a typo is reported with its line before models are built
        return v

    @field_validator("normalize")
    @classmethod
    def _normalize_known(cls, v: Any) -> Any:
        from kdgraph.align.normalizers import parse_normalizer

        parse_normalizer(v)
        return v

    @property
    def label(self) -> str:
        if self.name:
            return f"pair:{self.name}"
        where = f"{self.teacher_model}." if self.teacher_model else ""
        return f"pair:{'+'.join(self.student_taps)}->{where}{'+'.join(self.teacher_taps)}"


class LogitsSpec(Section):
    """Distillation on the output logits."""

    loss: LogitLossSpec = Field(
        default_factory=lambda: LogitLossSpec(name="kl"),
        description=f"A logit loss, {_loss_names(('logit',))} (`kl`: KL(p_t || p_s) at temperature T, scaled by T^2), "
        "or `{name: ..., param: ...}`.")
    temperature: PositiveFloat = Field(default=4.0, description="Softmax temperature T.")
    weight: NonNegativeFloat = Field(default=1.0, description="Weight of the logit term.")
    standardise: bool = Field(
        default=False, description="Logit standardisation (Sun et al., CVPR 2024): z-score each sample's logits "
        "(mean 0, Bessel-corrected std 1) on both sides before the loss; `temperature` is then a base temperature.")
    warmup_epochs: NonNegativeFloat = Field(default=0.0, description=_WARMUP)
    teacher_model: Optional[str] = Field(
        default=None, description="Which of `teachers:` gives the logits (needed when there are several)."
    )

    _loss_named = short_form("loss")


class DistillSpec(Section):
    """What is transferred from teacher to student."""

    logits: Optional[LogitsSpec] = Field(default=None, description="Logit distillation term, if any.")
    pairs: list[PairSpec] = Field(default_factory=list, description="Feature pairs.")


class SelfDistillSpec(Section):
    """Self-distillation: auxiliary heads on shallow student layers learn from the deepest classifier."""

    heads: list[str] = Field(description="Student layers after which an auxiliary head is attached.")
    head: Literal["sepconv", "linear"] = Field(default="sepconv", description="Head kind (see docs/methods.md).")
    attention: bool = Field(default=True, description="Attention gate before a sepconv head's bottleneck.")
    deep_map: Optional[str] = Field(default=None, description="The deepest stage's map (default: the last map layer).")
    deep_feature: Optional[str] = Field(
        default=None, description="The deepest feature h_deep (default: the input of the last Linear layer)."
    )
    alpha: float = Field(default=0.3, ge=0, le=1, description="α: weight of the soft term vs (1 − α) of CE per head.")
    feature_weight: NonNegativeFloat = Field(default=0.03, description="λ: weight of ‖W_i h_i − sg(h_deep)‖.")
    temperature: PositiveFloat = Field(default=3.0, description="T of the soft cross-entropy H_T(q_i, sg(q_deep)).")
    t_squared: bool = Field(default=False, description="Multiply the soft term by T² (the published code does not).")
