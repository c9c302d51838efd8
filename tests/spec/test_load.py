import pytest

from kdgraph.errors import SpecError
from kdgraph.spec import load_spec, parse_overrides, apply_overrides, spec_from_dict

GOOD = """\
name: t
teacher: {model: "kdgraph:fmnist_resnet", weights: builtin}
student: {model: "kdgraph:fmnist_cnn"}
data: {dataset: fashion-mnist, batch_size: 64}
distill:
  logits: {loss: kl, temperature: 4.0, weight: 0.9}
  pairs:
    - {teacher: layer3, student: block3, loss: mse}
    - teacher: layer2
      student: block2
      loss: {name: logsum, alpha: 4}
train:
  epochs: 2
"""


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_good_spec_normalises_loss_forms(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    pairs = spec.distill.pairs
    assert pairs[0].loss.name == "mse" and pairs[0].loss.params == {}
    assert pairs[1].loss.name == "logsum" and pairs[1].loss.params == {"alpha": 4}
    assert spec.run_dir == "runs/t"
    assert spec.line_of("distill", "pairs", 1, "loss") == 11


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD.replace("epochs: 2", "epoch: 2")))
    text = str(err.value)
    assert "train.epoch (line 13)" in text
    assert "did you mean 'epochs'" in text


def test_wrong_type_and_bad_choice(tmp_path):
    bad = GOOD.replace("batch_size: 64", "batch_size: many").replace("epochs: 2", "epochs: 2\n  optimizer: {name: sgdd}")
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, bad))
    text = str(err.value)
    assert "2 problems" in text
    assert "data.batch_size (line 4)" in text and "'many'" in text
    assert "train.optimizer.name (line 14)" in text and "did you mean 'sgd'" in text


def test_unknown_loss_parameter_lists_valid_ones(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD.replace("alpha: 4", "beta: 4")))
    assert "distill.pairs[1].loss" in str(err.value) and "alpha" in str(err.value)


def test_unknown_loss_name(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD.replace("loss: mse}", "loss: mse2}")))
    assert "distill.pairs[0].loss" in str(err.value) and "mse" in str(err.value)


def test_malformed_yaml_reports_line(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "name: x\nstudent: {model: [\n"))
    assert "not valid YAML" in str(err.value) and "line" in str(err.value)


def test_python_tags_are_rejected(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\nstudent: {model: 'kdgraph:fmnist_cnn'}\n"))
    assert "safe loading" in str(err.value)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="empty"):
        load_spec(write(tmp_path, ""))


def test_bad_model_scheme(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD.replace('"kdgraph:fmnist_cnn"', '"resnet18"')))
    assert "student.model (line 3)" in str(err.value) and "timm:" in str(err.value)


def test_distill_without_teacher_is_rejected(tmp_path):
    with pytest.raises(SpecError, match="need a teacher"):
        load_spec(write(tmp_path, GOOD.replace('teacher: {model: "kdgraph:fmnist_resnet", weights: builtin}\n', "")))


def test_overrides_parse_yaml_scalars_and_paths(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), ["train.epochs=1", "distill.pairs[1].weight=2.5",
                                             "train.optimizer.lr=1e-3", "runtime.device=cpu", "distill.pairs.0.loss=l1"])
    assert spec.train.epochs == 1
    assert spec.distill.pairs[1].weight == 2.5
    assert spec.train.optimizer.lr == pytest.approx(1e-3)
    assert spec.distill.pairs[0].loss.name == "l1"


def test_override_errors():
    with pytest.raises(SpecError, match="key.path=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(SpecError, match="index out of range"):
        apply_overrides({"a": [1]}, parse_overrides(["a[3]=1"]))


def test_override_inside_a_shorthand_keeps_it(tmp_path):
    # `mix: cutmix`, `output: DIR`, `eval: [..]`, `loss: NAME` are short for a mapping: a --set of one of its keys
    # extends that mapping instead of silently replacing the shorthand (mix name, run dir) or failing
    text = GOOD.replace("batch_size: 64}", "batch_size: 64, mix: cutmix}") + "eval: [top1, knn]\noutput: runs/mine\n"
    spec = load_spec(write(tmp_path, text), ["data.mix.alpha=0.4", "output.keep=3", "eval.every=2"])
    assert (spec.data.mix.name, spec.data.mix.alpha) == ("cutmix", 0.4)
    assert (spec.output.dir, spec.output.keep) == ("runs/mine", 3)
    assert (spec.eval.metrics, spec.eval.every) == (["top1", "knn"], 2)
    spec = load_spec(write(tmp_path, GOOD.replace("loss: mse}", "loss: logsum}")), ["distill.pairs[0].loss.alpha=3"])
    assert spec.distill.pairs[0].loss.name == "logsum"


def test_override_validation_error_names_key(tmp_path):
    with pytest.raises(SpecError, match="train.epochs"):
        load_spec(write(tmp_path, GOOD), ["train.epochs=-1"])


def test_a_bad_override_is_blamed_on_the_set_not_on_the_file_line(tmp_path):
    # train.epochs is on line 13 of the file, but the bad value came from --set
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, GOOD), ["train.epochs=x"])
    assert "train.epochs (--set train.epochs=x): " in str(err.value) and "line 13" not in str(err.value)
    # a key under an overridden mapping came from the --set too; a mapping with an overridden key inside names both;
    # the file's other keys keep their lines
    spec = load_spec(write(tmp_path, GOOD), ["distill.pairs[0]={teacher: layer9, student: block3}", "train.epochs=3"])
    assert spec.line_of("distill", "pairs", 0, "teacher") == "--set distill.pairs[0]={teacher: layer9, student: block3}"
    assert spec.line_of("train", "epochs") == "--set train.epochs=3"
    assert spec.line_of("train") == "line 12, --set train.epochs=3"
    assert spec.line_of("distill", "pairs", 1, "teacher") == 9 and spec.line_of("name") == 1


def test_spec_from_dict_requires_mapping():
    with pytest.raises(SpecError, match="must be a mapping"):
        spec_from_dict([1, 2])


def test_exponent_floats_are_numbers(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.replace("epochs: 2", "epochs: 2\n  optimizer: {lr: 1e-3, weight_decay: 5e-4}")),
                     ["train.schedule.min_lr=1e-6"])
    assert spec.train.optimizer.lr == pytest.approx(1e-3)
    assert spec.train.optimizer.weight_decay == pytest.approx(5e-4)
    assert spec.train.schedule.min_lr == pytest.approx(1e-6)


def test_on_off_are_words_not_booleans(tmp_path):
    """YAML 1.2 booleans: `compile: off` is the choice "off"; boolean keys still take on/off/yes/no."""
    text = GOOD.replace("epochs: 2", "epochs: 2\n  baseline: yes") + "runtime: {compile: off, channels_last: on}\n"
    spec = load_spec(write(tmp_path, text), ["runtime.distributed=off"])
    assert (spec.runtime.compile, spec.runtime.channels_last, spec.runtime.distributed) == ("off", "on", "off")
    assert spec.train.baseline is True
    assert load_spec(write(tmp_path, text), ["train.baseline=false"]).train.baseline is False
