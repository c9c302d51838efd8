"""kdgraph teach: what it stores, refusals before any work, resuming after a kill to the same bytes, and a 2-process
store equal to a 1-process one."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdgraph.cli.main import main
from kdgraph.store.record_layout import parse_size
from kdgraph.store.manifest import StoreError, read_manifest
from kdgraph.teach import teach
from kdgraph.session.launch import TORCHRUN_VARS, torchrun_argv
from kdgraph.session.progress import Reporter
from kdgraph.data.views import ViewMaker

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_holds_each_views_numbers_and_outputs(tmp_path, store_spec, seeded_plan):
    spec = store_spec()
    result = teach(spec, out=tmp_path / "s", quiet=True, shard_images=50)
    m = read_manifest(tmp_path / "s")
    assert m["complete"] and m["views"] == 2 and len(m["shards"]) == 4 and result.computed == 2 * 96
    assert m["teachers"]["teacher"]["taps"]["layer3"]["stored"] == "pooled"
    assert m["records"] == {"view/crop": {"dtype": "float64", "shape": [5]},
                            "view/partner": {"dtype": "int32", "shape": []},
                            "view/ratio": {"dtype": "float64", "shape": []},
                            "t/teacher/logits": {"dtype": "float32", "shape": [10]},
                            "t/teacher/tap/layer3": {"dtype": "float32", "shape": [32]}}
    assert m["bytes_per_view"] == 40 + 4 + 8 + 40 + 128 == result.bytes_per_view
    # the recorded numbers are the views an online run draws in that epoch
    plan = seeded_plan(store_spec(teacher={"store": str(tmp_path / "s")}))
    maker = ViewMaker(spec.data, num_classes=10, seed=0, dataset=plan.data.train, image_shape=(1, 28, 28))
    index = torch.tensor([3, 77, 50, 12])
    for view in (0, 1):
        drawn, stored = maker.draw(index, view), plan.store.params(index, view)
        for name in ("crop", "partner", "partner_crop", "ratio"):
            assert torch.equal(getattr(stored, name), getattr(drawn, name)), name


def test_the_store_holds_each_layer_as_its_pairs_read_it(tmp_path, store_spec):
    """By default a layer a pair compares whole is stored whole and a layer the pairs pool is stored pooled (no
    --full-maps needed); --full-maps stores both whole."""
    pairs = {"logits": {"temperature": 4.0}, "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"},
                                                       {"teacher": "layer2", "student": "block2", "pool": "gap"}]}
    teach(store_spec(distill=pairs), views=1, out=tmp_path / "a", quiet=True)
    records = read_manifest(tmp_path / "a")["records"]
    assert records["t/teacher/tap/layer3"] == {"dtype": "float32", "shape": [32, 7, 7]}  # mse on whole maps
    assert records["t/teacher/tap/layer2"] == {"dtype": "float32", "shape": [16]}  # pooled by its pair
    teach(store_spec(distill=pairs), views=1, full_maps=True, out=tmp_path / "b", quiet=True)
    assert read_manifest(tmp_path / "b")["records"]["t/teacher/tap/layer2"]["shape"] == [16, 14, 14]


def test_views_default_to_one_when_every_epoch_shows_the_same_images(tmp_path, store_spec):
    plain = {"augment": "none", "mix": "none"}
    assert teach(store_spec(data=plain, train={"epochs": 3}), out=tmp_path / "a", quiet=True).views == 1
    assert teach(store_spec(train={"epochs": 3}), out=tmp_path / "b", quiet=True).views == 3  # augmented
    assert teach(store_spec(data=plain, train={"epochs": 3}), views=2, out=tmp_path / "c", quiet=True).views == 2


def test_the_size_is_printed_first_and_a_store_above_max_size_refused(tmp_path, store_spec, monkeypatch):
    whole = {"logits": {"temperature": 4.0}, "pairs": [{"teacher": "layer3", "student": "block3"}]}
    per_view = 5 * 8 + 4 + 8 + 10 * 4 + 32 * 7 * 7 * 4  # crop, partner, ratio; logits; layer3 (float32)
    lines = []
    reporter = Reporter(quiet=False)
    monkeypatch.setattr(reporter, "info", lines.append)
    with pytest.raises(StoreError) as err:
        teach(store_spec(distill=whole), max_bytes=1000, out=tmp_path / "a", reporter=reporter)
    assert lines == [f"store: 96 images × 2 views × (10 logits float32 + layer3 32×7×7 float32 + 52 bytes of view "
                     f"numbers) = {per_view:,} bytes per image and view ≈ {96 * 2 * per_view / 2**20:.1f} MiB"]
    assert err.value.key == "--max-size"
    assert err.value.message.startswith(
        f"the store would take {96 * 2 * per_view / 2**20:.1f} MiB (96 images × 2 views × {per_view:,} bytes per image "
        "and view), above --max-size 1000 bytes; raise --max-size (--max-size 1GiB)")
    monkeypatch.setattr("kdgraph.store.record_layout.HOST_LIMIT", 96 * per_view - 1)  # one view above what training holds
    view = f"{96 * per_view / 2**10:.1f} KiB"
    with pytest.raises(StoreError, match=rf"one view of the store would take {view}, and training from a store holds "
                                         rf"a whole view in memory \(limit {view}\); pool the layers") as err:
        teach(store_spec(distill=whole), out=tmp_path / "a", quiet=True)
    assert err.value.key == "distill.pairs"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text, size", [("20GB", 20 * 10**9), ("32GiB", 32 * 2**30), ("32G", 32 * 2**30),
                                        ("500MiB", 500 * 2**20), ("1.5 TB", 15 * 10**11), ("4096", 4096),
                                        ("2kb", 2000)])
def test_max_size_reads_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "0GB", "-1GB", "20 parsecs", ""])
def test_max_size_refuses_what_is_no_size(text):
    with pytest.raises(StoreError, match="is no size; give a positive number with a unit") as err:
        parse_size(text)
    assert err.value.key == "--max-size"


def test_refused_before_any_work(tmp_path, store_spec):
    with pytest.raises(StoreError, match="--top-k 10 must lie between 1 and 9"):
        teach(store_spec(), top_k=10, out=tmp_path / "a", quiet=True)
    with pytest.raises(StoreError, match="teacher: self or no teacher"):
        teach(store_spec(teacher=None, distill={"logits": None, "pairs": []}), out=tmp_path / "a", quiet=True)
    assert not (tmp_path / "a").exists()  # nothing written
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds no teacher store"):
        teach(store_spec(), out=tmp_path / "b", quiet=True)
    teach(store_spec(), out=tmp_path / "c", quiet=True)
    with pytest.raises(StoreError, match=r"holds a store written for something else \(augmentation.crop_scale"):
        teach(store_spec(data={"crop_scale": [0.5, 1.0]}), out=tmp_path / "c", quiet=True)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_cli_teach_and_inspect(tmp_path, store_spec):
    doc = store_spec().model_dump(mode="json")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    runner = CliRunner()
    out = runner.invoke(main, ["teach", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "s"), "--views", "1",
                               "--top-k", "4", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "1 view(s) of 96 images" in out.output and "teacher.store:" in out.output
    shown = runner.invoke(main, ["inspect", str(tmp_path / "s")])
    assert shown.exit_code == 0 and "top 4 of 10" in shown.output and "pooled (gap) to 32" in shown.output
    assert json.loads(runner.invoke(main, ["inspect", str(tmp_path / "s"), "--json"]).output)["views"] == 1
    bad = runner.invoke(main, ["teach", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "t"), "--top-k", "12"])
    assert bad.exit_code == 2 and "error: --top-k: --top-k 12 must lie between 1 and 9" in bad.output
    assert "Traceback" not in bad.output


def test_cli_teach_on_the_quickstart_as_it_is(tmp_path):
    """The quickstart pairs whole layer3 maps and augments nothing: teach stores them whole, in one view, printing
    the size first; --max-size below it is refused with exit 2 naming it and the estimate, and nothing written."""
    runner = CliRunner()
    small = ["--set", "data.source=embedded", "--set", "data.train_subset=256", "--set", "runtime.threads=1"]
    quickstart = str(ROOT / "specs" / "quickstart.yaml")
    out = runner.invoke(main, ["teach", quickstart, *small, "--out", str(tmp_path / "s")])
    assert out.exit_code == 0, out.output
    per_view = 10 * 4 + 64 * 7 * 7 * 4
    line = (f"store: 256 images × 1 view × (10 logits float32 + layer3 64×7×7 float32) = {per_view:,} bytes per "
            f"image and view ≈ {256 * per_view / 2**20:.1f} MiB")
    assert out.output.index(line) < out.output.index("teach quickstart: teacher over 1 view(s) of 256 images")
    assert read_manifest(tmp_path / "s")["teachers"]["teacher"]["taps"]["layer3"]["stored"] == "whole"
    valid = runner.invoke(main, ["validate", quickstart, *small, "--set", f"teacher.store={tmp_path / 's'}"])
    assert valid.exit_code == 0, valid.output
    big = runner.invoke(main, ["teach", quickstart, *small, "--out", str(tmp_path / "t"), "--max-size", "1MB"])
    assert big.exit_code == 2 and "Traceback" not in big.output
    assert (f"error: --max-size: the store would take {256 * per_view / 2**20:.1f} MiB (256 images × 1 view × "
            f"{per_view:,} bytes per image and view), above --max-size 976.6 KiB") in big.output
    assert not (tmp_path / "t").exists()


def _spec_file(tmp_path: Path, store_spec, **sections) -> Path:
    spec = store_spec(**sections)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_teach_killed_at_a_random_point_and_rerun_writes_the_same_store(tmp_path, store_spec, store_files):
    sections = dict(data={"train_subset": 384}, train={"epochs": 4})
    spec_path = _spec_file(tmp_path, store_spec, **sections)
    teach(store_spec(**sections), out=tmp_path / "whole", quiet=True, shard_images=16)
    shards = 4 * 384 // 16
    stop_after = random.Random().randrange(1, shards - 8)
    command = [sys.executable, "-m", "kdgraph", "teach", str(spec_path), "--out", str(tmp_path / "cut"),
               "--shard-images", "16", "--quiet"]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        written = len(list((tmp_path / "cut" / "shards").glob("v*.safetensors")))
        if written >= stop_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not read_manifest(tmp_path / "cut")["complete"], f"killed after {stop_after} shards: it had finished"
    rerun = subprocess.run(command[:-1], env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "continued a stopped teach" in rerun.stderr
    assert store_files(tmp_path / "cut") == store_files(tmp_path / "whole"), f"killed after {stop_after} shards"


@pytest.mark.slow
def test_two_gloo_processes_write_the_store_one_process_writes(tmp_path, store_spec, store_files):
    spec_path = _spec_file(tmp_path, store_spec, runtime={"seed": 0, "threads": 1, "device": "cpu"})
    args = ["teach", str(spec_path), "--shard-images", "20", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "kdgraph", *args, "--out", str(tmp_path / "one")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([*torchrun_argv(2, [*args, "--out", str(tmp_path / "two")])], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert store_files(tmp_path / "two") == store_files(tmp_path / "one")
