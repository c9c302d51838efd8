"""Training from a teacher store: the online run's steps exactly, no teacher forward, and a store that does not fit
the spec refused before training with what differs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.spec import load_spec
from kdgraph.store.manifest import StoreError
from kdgraph.teach import teach
from kdgraph.train import train

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["data.source=embedded", "data.train_subset=256", "data.test_subset=64", "data.batch_size=64",
         "train.epochs=3", "train.baseline=false", "data.augment=resized-crop-flip", "data.mix=mixup",
         "runtime.threads=1", "runtime.device=cpu"]


def test_quickstart_from_a_store_of_epochs_views_equals_the_online_run_step_by_step(tmp_path, steps,
                                                                                     teacher_forwards):
    """The quickstart pair (whole layer3 maps, which teach stores whole for it unasked) with resized-crop-flip and
    mixup: the store of K = epochs views with all logits gives every step's loss of the online run within 1e-5, and
    no teacher runs."""
    steps["run"] = "online"
    online = train(load_spec(QUICKSTART, SMALL), write=False, quiet=True)
    teach(load_spec(QUICKSTART, SMALL), out=tmp_path / "store", quiet=True, shard_images=100)
    teacher_forwards.clear()
    steps["run"] = "store"
    stored = train(load_spec(QUICKSTART, [*SMALL, f"teacher.store={tmp_path / 'store'}"]), write=False, quiet=True)
    assert teacher_forwards == []  # not in a step, not for the teacher's top-1 or agreement (teach kept its logits)
    assert len(steps["online"]) == len(steps["store"]) == 3 * 4
    np.testing.assert_allclose(steps["store"], steps["online"], rtol=0, atol=1e-5)
    assert len(set(np.round(steps["online"], 4))) > 6  # the loss moves
    assert stored.summary["teacher_top1"] == online.summary["teacher_top1"]
    assert stored.summary["student_top1"] == pytest.approx(online.summary["student_top1"], abs=1 / 64)
    for key in ("val_agree", "val_kl"):  # from the teacher's test logits the store holds, as online from its forward
        assert stored.metrics[-1][key] == pytest.approx(online.metrics[-1][key], abs=1 / 64 if key == "val_agree"
                                                        else 1e-2), key


@pytest.mark.parametrize("data", [{"augment": "crop-flip", "mix": "cutmix"},
                                  {"augment": "resized-crop-flip", "mix": "mixup", "views": "independent"},
                                  {"augment": "crop-flip", "mix": "none"}], ids=["cutmix", "independent", "no-mix"])
def test_other_policies_replay_the_online_run_too(tmp_path, store_spec, steps, data):
    steps["run"] = "online"
    train(store_spec(data=data), write=False, quiet=True)
    teach(store_spec(data=data), out=tmp_path / "s", quiet=True)
    steps["run"] = "store"
    train(store_spec(data=data, teacher={"store": str(tmp_path / "s")}), write=False, quiet=True)
    np.testing.assert_allclose(steps["store"], steps["online"], rtol=0, atol=1e-5)


def test_fewer_views_than_epochs_repeat_and_top_k_trains(tmp_path, store_spec, steps, seeded_plan):
    spec = store_spec(train={"epochs": 3})
    teach(spec, views=2, top_k=3, out=tmp_path / "s", quiet=True)
    plan = seeded_plan(store_spec(train={"epochs": 3}, teacher={"store": str(tmp_path / "s")}))
    store = plan.store
    assert store.views == 2 and store.describe(3).count("repeat after 2 epochs") == 1
    index = torch.tensor([5, 0, 17])
    logits = store.outputs(index, 1)["teacher"]["output"]
    assert logits.shape == (3, 10)
    assert all(len(set(row.tolist())) == 4 for row in logits)  # three stored values and one shared by the rest
    assert store.outputs(index, 1)["teacher"]["layer3"].shape == (3, 32, 1, 1)  # pooled, replayed as a 1x1 map
    assert torch.equal(store.params(index, 0).crop, store.params(index, 0).crop)
    steps["run"] = "top-k"
    result = train(plan.spec, write=False, quiet=True)
    assert len(result.metrics) == 3 and np.isfinite(steps["top-k"]).all()


def test_a_store_for_something_else_is_refused_with_what_differs(tmp_path, store_spec, seeded_plan):
    teach(store_spec(), out=tmp_path / "s", quiet=True)
    teacher = {"store": str(tmp_path / "s")}

    def refused(**sections) -> str:
        with pytest.raises(StoreError) as err:
            own = sections.pop("teacher", {})
            seeded_plan(store_spec(**sections, teacher={**teacher, **own}))
        assert err.value.key == "teacher.store"
        return err.value.message

    assert "weights_sha256" in refused(runtime={"seed": 5, "threads": 1})  # another random init: other weights
    assert "kwargs" in refused(teacher={"kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}})
    assert "data.images" in refused(data={"train_subset": 64})
    assert "augmentation.crop_scale" in refused(data={"crop_scale": [0.5, 1.0]})
    assert "augmentation.mix.name" in refused(data={"mix": "cutmix"})
    message = refused(distill={"logits": {"temperature": 4.0}, "pairs": [{"teacher": "layer3", "student": "block3"}]})
    assert "distill.pairs[0]" in message and "pool: gap" in message
    assert "kdgraph teach (it stores the whole maps" in message
    message = refused(distill={"pairs": [{"teacher": "layer2", "student": "block2", "pool": "gap"}]})
    assert "'layer2'" in message and "does not hold" in message


def test_a_damaged_shard_is_named_and_teach_again_repairs_it(tmp_path, store_spec, store_files, seeded_plan):
    path = tmp_path / "s"
    teach(store_spec(), out=path, quiet=True, shard_images=40)
    before = store_files(path)
    spec = store_spec(teacher={"store": str(path)})
    shard = sorted((path / "shards").iterdir())[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])  # truncated: refused when the store is opened
    with pytest.raises(StoreError, match=r"v0000-00000040.safetensors' of the store is [\d,]+ bytes, the manifest says"):
        seeded_plan(spec)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit altered: found by its sha256 when read
    plan = seeded_plan(spec)
    with pytest.raises(StoreError, match=r"damaged: it has sha256 .* run the kdgraph teach command"):
        plan.store.params(torch.tensor([0]), 0)
    result = teach(store_spec(), out=path, quiet=True, shard_images=40)
    assert result.computed == 40 and store_files(path) == before  # only that shard was written again


@pytest.mark.parametrize("views, epochs, want", [(1, 1, "(1 view for 1 epoch)"), (3, 2, "(3 views for 2 epochs)"),
                                                 (1, 4, "every epoch replays its one view")])
def test_the_store_line_counts_its_views_and_epochs_in_words(views, epochs, want):
    from kdgraph.store.replay import TeacherStore

    store = TeacherStore("s", {"views": views, "seed": 0, "bytes_per_view": 1, "data": {"images": 1}}, {})
    assert want in store.describe(epochs)
    assert "1 views" not in store.describe(epochs) and "1 epochs" not in store.describe(epochs)
