"""Loss modules in a run: trained with the student, checkpointed with their state (CRD's memory bank, the random
streams of CRD's negatives and MGD's masks) so an interrupted run resumes bit-identically, saved in
adapters.safetensors and never in student.safetensors; stages that switch cross-entropy off or train a module's own
objective; warm-ups applied per epoch."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kdgraph.models import create_model
from kdgraph.spec import spec_from_dict
from kdgraph.train import train
from kdgraph.rundir.export import export_student

CRD = {"teacher": "flatten", "student": "flatten", "loss": {"name": "crd", "num_negatives": 64}, "weight": 0.8}
MGD = {"teacher": "layer3", "student": "block3", "loss": {"name": "mgd", "ratio": 0.5}}


def make(tiny_doc, tmp_path, pairs, **train_changes):
    doc = json.loads(json.dumps(tiny_doc))
    doc["distill"]["pairs"] = pairs
    doc["train"].update(train_changes)
    doc["output"] = {"dir": str(tmp_path / "run"), "checkpoint_every": 2, "keep": 20}
    return spec_from_dict(doc)


@pytest.mark.parametrize("pair", [CRD, MGD], ids=["crd", "mgd"])
def test_an_interrupted_run_resumes_bit_identical_loss_state_included(tmp_path, tiny_doc, pair):
    full = train(make(tiny_doc, tmp_path / "a", [pair]), quiet=True)
    # the run as it stood 2 steps into epoch 2: later checkpoints, the last metrics row and the exports gone
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    run = tmp_path / "b" / "run"
    checkpoints = sorted((run / "checkpoints").glob("ckpt-*.json"))
    assert "ckpt-e0001-s000002.json" in [c.name for c in checkpoints]
    for path in (run / "checkpoints").iterdir():
        if path.stem > "ckpt-e0001-s000002":
            path.unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    for name in ("student.safetensors", "adapters.safetensors"):
        (run / name).unlink()
    resumed = train(make(tiny_doc, tmp_path / "b", [pair]), quiet=True, resume=True)
    timing = ("time_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.metrics] == \
        [{k: v for k, v in r.items() if k not in timing} for r in full.metrics]
    for name in ("student.safetensors", "adapters.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "run" / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    adapters = load_file(str(run / "adapters.safetensors"))
    state = [k for k in adapters if k.startswith("loss.")]
    assert any(k.endswith(".rng.state") for k in state)
    if pair is CRD:
        assert {k.rsplit(".", 1)[-1] for k in state} >= {"memory_student", "memory_teacher", "z_student", "weight"}


def test_loss_modules_are_saved_with_the_adapters_and_never_with_the_student(tmp_path, tiny_doc):
    vid = {"teacher": "layer3", "student": "block3", "loss": "vid"}
    result = train(make(tiny_doc, tmp_path, [vid, CRD], epochs=1), quiet=True)
    run = tmp_path / "run"
    adapters = load_file(str(run / "adapters.safetensors"))
    student = load_file(str(run / "student.safetensors"))
    assert any(k.startswith("loss.pair:block3->layer3.log_scale") for k in adapters)  # VID's trained variances
    assert any(k.startswith("loss.pair:flatten->flatten.memory.memory_student") for k in adapters)
    assert not any("memory" in k or "log_scale" in k or "regressor" in k for k in student)
    plain = create_model("kdgraph:fmnist_cnn", {"widths": [4, 8, 16]})
    plain.load_state_dict(student, strict=True)
    exported = export_student(run, tmp_path / "exported.safetensors")
    assert set(load_file(str(exported))) == set(plain.state_dict())
    trained = result.plan.graph.loss_modules["pair:block3->layer3"].log_scale
    assert torch.equal(adapters["loss.pair:block3->layer3.log_scale"], trained.detach())


def test_a_pre_stage_trains_only_a_modules_objective_then_the_student(tmp_path, tiny_doc):
    ft = {"name": "factor", "teacher": "layer3", "student": "block3", "loss": "ft", "weight": 10.0}
    stages = [{"name": "paraphraser", "epochs": 1, "objectives": ["factor"], "ce": False},
              {"name": "task", "epochs": 1, "pairs": ["factor"], "reset_optimizer": True}]
    tiny_doc["distill"].pop("logits")
    spec = make(tiny_doc, tmp_path, [ft], epochs=2, stages=stages, max_steps_per_epoch=3)
    result = train(spec, quiet=True, write=False)
    first, second = result.metrics
    assert first["stage"] == "paraphraser" and set(k for k in first if k.startswith("loss/")) == \
        {"loss/pair:factor/objective", "loss/total"}
    assert second["stage"] == "task" and {"loss/ce", "loss/pair:factor"} <= set(second)
    assert "loss/pair:factor/objective" not in second
    assert first["loss/total"] == pytest.approx(first["loss/pair:factor/objective"])


def test_the_first_stage_leaves_the_student_weights_alone_when_only_an_objective_trains(tmp_path, tiny_doc):
    from kdgraph.plan import resolve_plan
    from kdgraph.train.trainer import Trainer

    ft = {"name": "factor", "teacher": "layer3", "student": "block3", "loss": "ft"}
    stages = [{"epochs": 1, "objectives": ["factor"], "ce": False}, {"epochs": 1, "pairs": ["factor"]}]
    tiny_doc["distill"].pop("logits")
    trainer = Trainer(resolve_plan(make(tiny_doc, tmp_path, [ft], epochs=2, stages=stages, max_steps_per_epoch=2)))
    student = {k: v.clone() for k, v in trainer.student.named_parameters()}
    paraphraser = [p.clone() for p in trainer.graph.loss_modules["pair:factor"].paraphraser.parameters()]
    trainer.epoch(0)
    assert all(torch.equal(student[k], v) for k, v in trainer.student.named_parameters())
    now = list(trainer.graph.loss_modules["pair:factor"].paraphraser.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(paraphraser, now))


def test_the_trainer_applies_each_terms_warm_up_per_epoch(tmp_path, tiny_doc):
    from kdgraph.plan import resolve_plan
    from kdgraph.train.trainer import Trainer

    tiny_doc["distill"]["logits"]["warmup_epochs"] = 4
    tiny_doc["distill"]["pairs"][0]["warmup_epochs"] = 2
    trainer = Trainer(resolve_plan(make(tiny_doc, tmp_path, tiny_doc["distill"]["pairs"])))
    labels = [t.label for t in trainer.graph.terms]
    for epoch, logits, pair in ((0, 0.25, 0.5), (1, 0.5, 1.0), (3, 1.0, 1.0)):
        trainer.enter_epoch(epoch)
        scales = dict(zip(labels, trainer.graph.scales.tolist()))
        assert scales == {"ce": 1.0, "logits": logits, "pair:block3->layer3": pair}
