"""The spec: one pydantic model per YAML section, ``extra="forbid"`` everywhere.

Validators normalise what users write into one shape (``loss: mse`` and ``loss: {name: mse}`` become the same
``LossSpec``); anything that needs the models (layer names, shapes) is checked later, in ``kdgraph.graph``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, PositiveFloat, PositiveInt, NonNegativeFloat, NonNegativeInt
from pydantic import PrivateAttr, field_validator, model_validator

from kdgraph.errors import did_you_mean, plural
from kdgraph.spec.models import InputSpec, ModelSpec, TeacherSpec
from kdgraph.spec.distill import DistillSpec, LogitLossSpec, LogitsSpec, LossSpec, PairSpec, SelfDistillSpec
from kdgraph.spec.section import Section, short_form

__all__ = [
    "Spec", "ModelSpec", "DataSpec", "DistillSpec", "LogitsSpec", "PairSpec", "LossSpec", "TrainSpec",
    "OptimizerSpec", "ScheduleSpec", "RuntimeSpec", "SyntheticSpec", "OutputSpec", "SelfDistillSpec", "StageSpec",
    "TeacherSpec", "MixSpec", "EvalSpec", "LogitLossSpec", "InputSpec",
]


def _did_you_mean(name: str, known: list[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``known`` (a loose match: names the user chose), or nothing."""
    return did_you_mean(name, known, cutoff=0.4)


class SyntheticSpec(Section):
    """Shape and size of the synthetic data set (for smoke tests and benchmarks); the side is data.image_size."""

    channels: PositiveInt = Field(default=3, description="Image channels.")
    classes: PositiveInt = Field(default=10, description="Number of classes.")
    train_size: PositiveInt = Field(default=2048, description="Training images (the test split has a fifth as many).")


class DataSpec(Section):
    """Where the images come from and how they are batched."""

    dataset: str = Field(
        default="fashion-mnist",
        description="`fashion-mnist`, `digits`, `imagefolder`, `torchvision:CIFAR10|CIFAR100|MNIST|FashionMNIST`, `synthetic`.",
    )
    root: Optional[str] = Field(default=None, description="Local folder holding the data set; kdgraph never downloads.")
    source: Literal["auto", "full", "embedded"] = Field(
        default="auto", description="Fashion-MNIST only: full set when found (data.root or Debian's package), else embedded subset."
    )
    batch_size: PositiveInt = Field(default=128, description="Training batch size.")
    drop_last: bool = Field(
        default=True, description="Drop each epoch's last partial training batch (every step then has the same "
        "shape: no recompilation, no one-image BatchNorm batch, equal data-parallel shards). false: train on it too, "
        "as a plain DataLoader does."
    )
    eval_batch_size: Optional[PositiveInt] = Field(default=None, description="Evaluation batch size (default: 2x batch_size).")
    image_size: Optional[PositiveInt] = Field(default=None, description="Image side for imagefolder / resized data sets.")
    augment: Literal["none", "crop-flip", "resized-crop-flip"] = Field(
        default="none", description="Batch augmentation of training batches, on the device: `crop-flip` (pad by "
        "`crop_padding` with `crop_fill` + random crop + flip, as torchvision's RandomCrop + RandomHorizontalFlip) or "
        "`resized-crop-flip` (random resized crop of area `crop_scale` + flip)."
    )
    crop_padding: Optional[NonNegativeInt] = Field(
        default=None, description="`crop-flip`: pixels of padding on every side before the random crop "
        "(torchvision's RandomCrop `padding`). None: max(1, W // 8), which is 4 for 32-px images."
    )
    crop_fill: float = Field(
        default=0.0, ge=0.0, le=1.0, description="`crop-flip`: colour of the padding as a pixel value in [0, 1] before "
        "normalisation, the same for every channel (torchvision's RandomCrop `fill` on a [0, 1] image). 0: black."
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.35, 1.0), description="`resized-crop-flip`: range of the crop's area as a fraction of the image."
    )
    views: Literal["shared", "independent"] = Field(
        default="shared", description="`shared`: teachers and student see the identical augmented (and mixed) batch; "
        "`independent`: the teachers get their own augmentation draw and mixing ratio, on the same images and mixing "
        "partners (ablation)."
    )
    mix: "MixSpec" = Field(default_factory=lambda: MixSpec(), description="Mixup/cutmix per image before every forward.")
    train_subset: Optional[PositiveInt] = Field(default=None, description="Use only the first N training images.")
    test_subset: Optional[PositiveInt] = Field(default=None, description="Use only the first N test images.")
    num_workers: Union[Literal["auto"], NonNegativeInt] = Field(
        default="auto", description="Loader processes for file-backed data sets (imagefolder), with persistent "
        "workers and pinned memory on CUDA. auto: sized from the CPU cores (one core left to the training process, "
        "shared among the processes of a node, at most 8); in-memory data sets are sliced in batches and use none.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="Used when dataset is `synthetic`.")

    _mix_named = short_form("mix")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale {list(v)} must be [low, high] with 0 < low <= high <= 1")
        return v


class MixSpec(Section):
    """Mixing per image (Beyer et al.): a partner from a permutation of the training set per epoch, a ~ Beta(p, p),
    a <- max(a, 1 - a), x~ = a x + (1 - a) x_partner."""

    name: Literal["none", "mixup", "cutmix"] = Field(default="none", description="Mixing kind (`mix: mixup` also works).")
    alpha: PositiveFloat = Field(default=1.0, description="p of Beta(p, p) for the mixing ratio.")


class OptimizerSpec(Section):
    name: Literal["sgd", "adam", "adamw"] = Field(default="sgd", description="Optimizer.")
    lr: PositiveFloat = Field(default=0.05, description="Peak learning rate.")
    momentum: NonNegativeFloat = Field(default=0.9, description="SGD momentum.")
    nesterov: bool = Field(default=False, description="SGD Nesterov momentum.")
    weight_decay: NonNegativeFloat = Field(default=5e-4, description="Weight decay (decoupled for adamw).")
    decay_norm_and_bias: bool = Field(
        default=False, description="Also decay 1-D parameters (biases, norm weights and shifts). false (default): "
        "they get no weight decay, as in timm and most recipes since Goyal et al. 2017; true: every parameter is "
        "decayed, as `torch.optim.SGD(model.parameters(), weight_decay=...)` does."
    )
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="Adam/AdamW betas.")


class ScheduleSpec(Section):
    name: Literal["constant", "step", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    warmup_epochs: NonNegativeFloat = Field(default=0.0, description="Linear warmup from 0, in epochs (fractions allowed).")
    step_epochs: PositiveInt = Field(default=30, description="`step`: multiply the lr by gamma every this many epochs.")
    gamma: PositiveFloat = Field(default=0.1, description="`step`: decay factor.")
    min_lr: NonNegativeFloat = Field(default=0.0, description="`cosine`: final learning rate.")


class StageSpec(Section):
    """One stage of a curriculum: which terms are active for how many epochs."""

    name: Optional[str] = Field(default=None, description="Stage name (metrics); default stageN.")
    epochs: PositiveInt = Field(description="Length of the stage in epochs.")
    pairs: list[str] = Field(default_factory=list, description="Pair names active in this stage.")
    logits: bool = Field(default=False, description="Whether the logit term is active.")
    ce: bool = Field(default=True, description="Whether cross-entropy on the labels is active (false: a stage that "
                     "trains the distillation terms alone, such as AB's or FSP's initialisation).")
    objectives: list[str] = Field(
        default_factory=list, description="Pairs whose loss module is trained on its own objective in this stage "
        "(FT's paraphraser learns to reconstruct the teacher's map before the student is distilled).")
    reset_optimizer: bool = Field(
        default=False, description="Re-create the optimizer (and a schedule spanning this stage) at its start."
    )


class TrainSpec(Section):
    epochs: PositiveInt = Field(default=3, description="Training epochs.")
    ce_weight: NonNegativeFloat = Field(default=1.0, description="Weight of cross-entropy on the labels.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    stages: list[StageSpec] = Field(
        default_factory=list, description="Curriculum: ordered stages; their epochs must add up to train.epochs."
    )
    grad_clip: Optional[PositiveFloat] = Field(default=None, description="Clip the gradient norm to this value.")
    max_steps_per_epoch: Optional[PositiveInt] = Field(default=None, description="Cap on steps per epoch (smoke tests).")
    max_bad_steps: PositiveInt = Field(
        default=3, description="Stop after this many consecutive steps with a non-finite loss or gradient."
    )
    baseline: bool = Field(
        default=False, description="Also train the student alone (no teacher) for the same budget and report both."
    )


class EvalSpec(Section):
    """What is measured on the test split after training epochs (`eval: [top1, knn]` is short for `metrics:`)."""

    metrics: list[Literal["top1", "knn", "linear_probe", "map"]] = Field(
        default_factory=lambda: ["top1"], min_length=1,
        description="`top1` of the student's classifier; `knn`: k-NN top-1 on the student's embedding (cosine, train "
        "split as the bank); `linear_probe`: a logistic regression fitted on frozen train embeddings; `map`: mean "
        "average precision of test images retrieving train images by the cosine similarity of their embeddings "
        "(kdgraph.eval.retrieval). The first metric picks `best.safetensors`.",
    )
    embedding: Optional[str] = Field(
        default=None, description="Student layer used as the embedding (default: the input of its last Linear)."
    )
    knn_k: PositiveInt = Field(default=20, description="Neighbours of the k-NN classifier.")
    every: PositiveInt = Field(default=1, description="Evaluate every N epochs (and always after the last).")

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"eval metrics {v} name one metric twice")
        return v


class OutputSpec(Section):
    """Where the run is written and how checkpoints are kept."""

    dir: Optional[str] = Field(default=None, description="Run directory (default: runs/NAME).")
    keep: PositiveInt = Field(default=2, description="Keep the last N checkpoints (plus `best`).")
    checkpoint_every: Optional[PositiveInt] = Field(
        default=None, description="Also checkpoint every N optimizer steps inside an epoch (long epochs)."
    )
    checkpoint_epochs: PositiveInt = Field(
        default=1, description="Checkpoint every N epochs (and always after the last): long schedules on small data."
    )


class RuntimeSpec(Section):
    device: str = Field(default="auto", description="`auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`.")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Seed for every random number generator (0 to 2^63-1).")
    threads: Optional[PositiveInt] = Field(default=None, description="CPU threads for torch (default: torch's choice).")
    precision: Literal["auto", "bf16", "fp16", "fp32", "fp64"] = Field(
        default="auto", description="auto: bf16 on CUDA, fp32 on CPU. fp64: models, adapters and batches in float64, "
        "no autocast: slow, for checking a run against a reference to rounding error.")
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = Field(
        default="auto", description="auto: compiled with CUDA graphs on CUDA, eager on CPU and with precision fp64."
    )
    channels_last: Literal["auto", "on", "off"] = Field(default="auto", description="auto: on for conv nets.")
    log: list[Literal["jsonl", "tensorboard"]] = Field(
        default_factory=lambda: ["jsonl"], description="Metric sinks; jsonl is always written, tensorboard needs the package."
    )
    distributed: Literal["auto", "off", "ddp", "fsdp"] = Field(
        default="auto", description="Data parallelism under torchrun (docs/distributed.md). auto: ddp when launched with "
        "WORLD_SIZE > 1, else off; ddp: DistributedDataParallel; fsdp: FSDP2 fully_shard. Student and adapters only."
    )
    sync_bn: bool = Field(
        default=False, description="Convert the student's BatchNorm to SyncBatchNorm (statistics over the global batch) "
        "when distributed; needs CUDA (NCCL)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N")

    @field_validator("distributed", mode="before")
    @classmethod
    def _distributed_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false


class Spec(Section):
    """A whole run: models, data, what to distill, how to train, where to write."""

    model_config = ConfigDict(extra="forbid", title="kdgraph spec", validate_assignment=True)

    name: str = Field(default="run", description="Run name.")
    teacher: Union[TeacherSpec, Literal["self"], None] = Field(
        default=None, description="The teacher; `self` for self-distillation; omit for plain supervised training."
    )
    teachers: list[TeacherSpec] = Field(
        default_factory=list, description="Several named teachers (instead of `teacher`); pairs pick one with `teacher_model`."
    )
    student: ModelSpec = Field(description="The student that is trained and exported.")
    data: DataSpec = Field(default_factory=DataSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    self_distill: Optional[SelfDistillSpec] = Field(default=None, description="Heads for `teacher: self`.")
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: "EvalSpec" = Field(default_factory=lambda: EvalSpec(), description="Evaluation metrics (`[top1, knn, linear_probe, map]`).")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    output: OutputSpec = Field(default_factory=OutputSpec, description="A run directory path, or {dir, keep, checkpoint_every}.")
    _lines: Any = PrivateAttr(default=None)

    def line_of(self, *path: Any) -> Optional[Union[int, str]]:
        """The YAML line of a key path, when the spec came from a file (``--set KEY=VALUE`` when set by one)."""
        return self._lines.line(path) if self._lines is not None else None

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_list(cls, v: Any) -> Any:
        return {"metrics": v} if isinstance(v, (list, str)) else v

    @model_validator(mode="after")
    def _teacher_needed(self) -> "Spec":
        self._check_teachers()
        if not self.teacher_specs and (self.distill.pairs or self.distill.logits):
            raise ValueError("distill terms need a teacher: add `teacher: {model: ...}` or remove `distill`")
        if self.teacher == "self":
            if self.self_distill is None or not self.self_distill.heads:
                raise ValueError("`teacher: self` needs `self_distill: {heads: [LAYER, ...]}`")
            if self.distill.pairs or self.distill.logits:
                raise ValueError("`teacher: self` takes its terms from `self_distill`; remove `distill`")
        elif self.self_distill is not None:
            raise ValueError("`self_distill` is used with `teacher: self` only")
        self._check_stages()
        return self

    def _check_teachers(self) -> None:
        if self.teachers and self.teacher is not None:
            raise ValueError("give either `teacher` or `teachers`, not both")
        names = [t.name for t in self.teachers]
        for i, name in enumerate(names):
            if not name:
                raise ValueError(f"teachers[{i}] needs a `name:` (pairs refer to it with `teacher_model`)")
            if names.count(name) > 1:
                raise ValueError(f"teachers[{i}]: the name {name!r} is used twice")
        stores = {t.store for t in self.teacher_specs.values() if t.store is not None}
        if len(stores) > 1:
            raise ValueError(f"the teachers name {len(stores)} stores ({', '.join(sorted(stores))}); every teacher "
                             "reads one store, which `kdgraph teach` writes for all of them")
        known = list(self.teacher_specs)
        refs = [(f"distill.pairs[{i}]", p.teacher_model) for i, p in enumerate(self.distill.pairs)]
        if self.distill.logits is not None:
            refs.append(("distill.logits", self.distill.logits.teacher_model))
        for key, ref in refs:
            if ref is None and len(known) > 1:
                raise ValueError(f"{key} needs `teacher_model:` naming one of the teachers ({', '.join(known)})")
            if ref is not None and ref not in known:
                raise ValueError(f"{key}.teacher_model {ref!r} is no teacher{_did_you_mean(ref, known)} "
                                 f"(teachers: {', '.join(known) or 'none'})")

    def _check_stages(self) -> None:
        from kdgraph.losses import get_loss

        stages = self.train.stages
        if not stages:
            return
        total = sum(stage.epochs for stage in stages)
        if total != self.train.epochs:
            raise ValueError(f"train.stages last {plural(total, 'epoch')} in all but train.epochs is "
                             f"{self.train.epochs}; "
                             f"set train.epochs: {total}")
        labels = [pair.label for pair in self.distill.pairs]
        names = [label.removeprefix("pair:") for label in labels]
        for i, stage in enumerate(stages):
            for name in stage.pairs:
                if name not in names and name not in labels:
                    raise ValueError(f"train.stages[{i}].pairs names {name!r}, which is no pair"
                                     f"{_did_you_mean(name, names)} "
                                     f"(pairs: {', '.join(names) or 'none'}; give pairs a `name:`)")
            for name in stage.objectives:
                pair = next((p for p, n, lab in zip(self.distill.pairs, names, labels) if name in (n, lab)), None)
                if pair is None or get_loss(pair.loss.name).module is None:
                    what = "which is no pair" if pair is None else f"whose loss {pair.loss.name!r} has no module"
                    raise ValueError(f"train.stages[{i}].objectives names {name!r}, {what}"
                                     f"{_did_you_mean(name, names) if pair is None else ''}")
            if stage.logits and self.distill.logits is None:
                raise ValueError(f"train.stages[{i}] activates logits but distill.logits is not set")

    @property
    def external_teacher(self) -> Optional[TeacherSpec]:
        """The first external teacher's spec, or None for plain training and self-distillation."""
        return next(iter(self.teacher_specs.values()), None)

    @property
    def teacher_specs(self) -> dict[str, TeacherSpec]:
        """Every external teacher by name (a single `teacher:` is named by its `name`, default `teacher`)."""
        if isinstance(self.teacher, TeacherSpec):
            return {self.teacher.name or "teacher": self.teacher}
        return {t.name: t for t in self.teachers}

    def teacher_key(self, name: str) -> tuple[str, tuple]:
        """Dotted key and YAML path of the teacher called ``name`` (for errors)."""
        if self.teachers:
            i = [t.name for t in self.teachers].index(name)
            return f"teachers[{i}]", ("teachers", i)
        return "teacher", ("teacher",)

    @field_validator("output", mode="before")
    @classmethod
    def _output_path(cls, v: Any) -> Any:
        return {"dir": v} if isinstance(v, str) or v is None else v

    @property
    def run_dir(self) -> str:
        return self.output.dir or f"runs/{self.name}"
