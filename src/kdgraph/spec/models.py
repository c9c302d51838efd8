"""The model sections of the spec: ``student``, ``teacher`` / ``teachers`` and the ``input`` each model expects."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from kdgraph.spec.section import Section

__all__ = ["InputSpec", "ModelSpec", "TeacherSpec"]


class InputSpec(Section):
    """The input a model was trained for. A key left out comes from the metadata published with pretrained weights
    (timm's pretrained_cfg, torchvision's weights transforms, a Hugging Face preprocessor_config.json) or the zoo's
    builtin weights, else from the data set's own statistics and size (never the student's `input:`)."""

    mean: Optional[list[float]] = Field(default=None, description="Per-channel mean the model's inputs are "
                                        "normalised with (pixels in [0, 1]), e.g. [0.5, 0.5, 0.5].")
    std: Optional[list[PositiveFloat]] = Field(default=None, description="Per-channel standard deviation.")
    size: Optional[Union[PositiveInt, tuple[PositiveInt, PositiveInt]]] = Field(
        default=None, description="Input side (or [H, W]) in pixels.")
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = Field(
        default=None, description="Resampling used to reach `size` (default bilinear).")

    @model_validator(mode="after")
    def _channels(self) -> "InputSpec":
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"input.mean has {len(self.mean)} values but input.std {len(self.std)}; give one per "
                             "channel in both")
        return self


class ModelSpec(Section):
    """A model reference, its constructor arguments and where its weights come from."""

    model: str = Field(description="`timm:NAME`, `torchvision:NAME`, `hf:ORG/NAME` (or `hf:/path/to/folder`), "
                       "`python:package.module:factory` or `kdgraph:NAME`.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model constructor.")
    weights: Optional[str] = Field(
        default=None,
        description="A safetensors path, `builtin` (zoo weights shipped with kdgraph) or `pretrained` "
        "(timm/torchvision/hf published weights, from the local cache only for hf). None: random init.",
    )
    input: Optional[InputSpec] = Field(
        default=None, description="The input the model was trained for: {mean, std, size, interpolation}; unset "
        "keys come from pretrained or builtin metadata, else the data set's own statistics. A teacher's batches are converted on the device; the "
        "data is normalised and sized for the student.",
    )

    @field_validator("model")
    @classmethod
    def _has_scheme(cls, v: str) -> str:
        from kdgraph.models.refs import SCHEMES

        scheme = v.split(":", 1)[0]
        if ":" not in v or scheme not in SCHEMES:
            raise ValueError(f"model reference {v!r} must start with one of {', '.join(s + ':' for s in SCHEMES)}")
        return v


class TeacherSpec(ModelSpec):
    """A frozen teacher: a model reference plus a name (to tell several apart) and an output cache policy."""

    name: Optional[str] = Field(
        default=None, description="Name a pair's `teacher_model` refers to; required in `teachers:` (default: teacher)."
    )
    cache: Literal["auto", "none", "outputs"] = Field(
        default="auto",
        description="`outputs`: compute the teacher's outputs once per un-augmented training image and reuse them "
        "(with augmentation or mixing this is the 'fixed teacher' ablation: the teacher no longer sees the "
        "student's view). `auto`: cache only when it is exact (data.augment and data.mix are none, and the data "
        "set is not imagefolder, whose random crops change every epoch) and the outputs take at most 1 GiB.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="The frozen teacher's weights and forward: `bf16`/`fp16` keep it in half "
        "precision (half the memory; BatchNorm is folded in float32 first, outputs are returned in float32). "
        "`auto`: float32 weights under runtime.precision's autocast.",
    )
    shard: Literal["none", "fsdp"] = Field(
        default="none", description="`fsdp` under torchrun: the teacher's parameters are sharded across the "
        "processes with FSDP2 (gathered per layer for its forward, resharded after it), for teachers that do not "
        "fit one device beside the student. `none`: a whole replica per process.",
    )
    store: Optional[str] = Field(
        default=None,
        description="A teacher store written by `kdgraph teach` (docs/store.md): in epoch e every image's view e mod K "
        "is rebuilt from the stored numbers and the teacher's stored outputs replace its forward. Refused when it was "
        "written for another teacher, weights, data, augmentation or layers.",
    )

    @model_validator(mode="after")
    def _store_or_cache(self) -> "TeacherSpec":
        if self.store is not None and self.cache == "outputs":
            raise ValueError("give either `store` (outputs per augmented view, from kdgraph teach) or `cache: "
                             "outputs` (one output per un-augmented image), not both")
        return self
