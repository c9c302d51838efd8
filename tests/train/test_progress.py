"""The reporter prints run messages as plain text: names from the spec are never read as rich markup."""

import io

from rich.console import Console

from kdgraph.session.progress import Reporter


def _printed(call, message):
    out = io.StringIO()
    reporter = Reporter(console=Console(file=out, width=200, highlight=False))
    getattr(reporter, call)(message)
    return out.getvalue()


def test_square_brackets_in_messages_are_printed():
    # an epoch line of a curriculum reads "epoch 1 [warm]: ..."; rich took "[warm]" for a style tag and dropped it
    assert _printed("info", "epoch 1 [warm]: ce 1.0") == "epoch 1 [warm]: ce 1.0\n"
    assert _printed("info", "data root /data/[set]") == "data root /data/[set]\n"
    assert _printed("warn", "layer [stage2] is odd") == "warning: layer [stage2] is odd\n"


def test_lines_written_to_a_file_or_pipe_are_never_wrapped(monkeypatch):
    # rich wrapped non-terminal output at 80 columns, splitting `pair:layer4->layer4` from its value in a log
    log = io.StringIO()  # not a terminal, like a pipe or a file
    monkeypatch.setattr("sys.stderr", log)
    line = "epoch 12: " + "  ".join(f"pair:layer{i}->layer{i} 0.1662" for i in range(1, 9)) + "  total 1.3296"
    reporter = Reporter()
    reporter.info(line)
    reporter.warn(line)
    assert log.getvalue() == f"{line}\nwarning: {line}\n"


def test_the_epoch_line_shows_the_terms_as_they_add_up_to_the_total():
    from kdgraph.session.progress import epoch_line

    # #29: the line printed `0.9×logits 0.2500`, the unweighted value, so the printed terms did not add up to total
    row = {"epoch": 2, "loss/ce": 0.5, "loss/logits": 0.25, "loss/pair:block3->layer3": 0.125,
           "loss/total": 0.5 * 0.5 + 0.9 * 0.25 + 0.125, "train_top1": 0.8, "val_top1": 0.75, "images_per_s": 1234.4}
    weights = {"ce": 0.5, "logits": 0.9, "pair:block3->layer3": 1.0}
    assert epoch_line(row, weights) == ("epoch 2: ce 0.2500 + logits 0.2250 + pair:block3->layer3 0.1250 = total "
                                        "0.6000  train 80.00%  val 75.00%  1234 img/s")


def printed_terms(line):
    """The numbers before `= total` and the total, from an epoch line."""
    terms, total = line.split(": ", 1)[1].split(" = total ")
    return [float(t.rsplit(" ", 1)[1]) for t in terms.split(" + ")], float(total.split()[0])


def test_a_runs_epoch_lines_add_up_and_the_first_explains_agree_and_kl(tmp_path, tiny_doc):
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    tiny_doc["distill"]["pairs"][0]["warmup_epochs"] = 2  # the pair's weight is 1/2 in epoch 1, 1 in epoch 2
    tiny_doc["output"] = str(tmp_path / "run")
    out = io.StringIO()
    reporter = Reporter(console=Console(file=out, width=400, highlight=False))
    result = train(spec_from_dict(tiny_doc), reporter=reporter)
    lines = out.getvalue().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2
    for line, row in zip(epochs, result.metrics):
        terms, total = printed_terms(line)
        assert abs(sum(terms) - total) <= 5e-5 * (len(terms) + 1), line
        assert total == round(row["loss/total"], 4)
    pair = "loss/pair:block3->layer3"
    assert f"pair:block3->layer3 {0.5 * result.metrics[0][pair]:.4f}" in epochs[0]
    assert f"pair:block3->layer3 {result.metrics[1][pair]:.4f}" in epochs[1]
    legend = lines[lines.index(epochs[0]) - 3:lines.index(epochs[0])]
    assert legend == [
        "  each loss term is shown weighted, as it adds up to total (logits ×0.9, warm-ups scale the weights of their "
        "first epochs; metrics.jsonl keeps the terms unweighted)",
        "  agree: how often student and teacher pick the same class on the test images",
        "  kl: KL(teacher ‖ student) of their softmaxes, the mean over the test images (nats)"], lines
    assert sum("agree:" in line for line in lines) == 1  # explained once, where it first appears


def test_an_epoch_line_on_a_narrow_terminal_wraps_between_fields():
    from kdgraph.session.progress import epoch_fields

    # #29: at 60 columns the terminal split `pair:block3->layer3` from its value
    row = {"epoch": 1, "loss/ce": 2.2760, "loss/logits": 13.6032, "loss/pair:block3->layer3": 2.3433,
           "loss/total": 16.8621, "train_top1": 0.1211, "val_top1": 0.0664, "val_agree": 0.0781, "val_kl": 2.1517,
           "images_per_s": 175}
    out = io.StringIO()
    Reporter(console=Console(file=out, width=60, highlight=False)).fields(
        epoch_fields(row, {"logits": 0.9}, "1m05s left (with the baseline)"))
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 1: ce 2.2760 + logits 12.2429",
                     "    + pair:block3->layer3 2.3433 = total 16.8621",
                     "    train 12.11%  val 6.64%  agree 7.81%  kl 2.1517",
                     "    175 img/s  1m05s left (with the baseline)"], lines
    assert all(len(line) <= 60 for line in lines)
    log = io.StringIO()  # a log file: never wrapped
    Reporter(console=Console(file=log, width=60, soft_wrap=True)).fields(epoch_fields(row, {"logits": 0.9}))
    assert len(log.getvalue().splitlines()) == 1


class Recording(Reporter):
    """A reporter that keeps every bar it was asked for: ``(description, total, steps advanced)``."""

    def __init__(self):
        super().__init__(console=Console(file=io.StringIO(), width=400, highlight=False))
        self.bars = []

    def _bar(self, description, total, clock):
        from contextlib import contextmanager

        from kdgraph.session.progress import Bar

        reporter = self

        class Counted(Bar):
            def set_total(self, n):
                record[1] = n

            def advance(self, n=1, status=None):
                super().advance(n, status)
                record[2] += n

        record = [description, total, 0]
        reporter.bars.append(record)

        @contextmanager
        def bar():
            yield Counted(None, None, clock)

        return bar()


def test_the_teacher_phases_have_progress_bars(tmp_path, tiny_doc):
    # #29: the teacher's top-1 and the teacher cache pass (about 55 s of the quickstart's 137 s) showed nothing
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    tiny_doc["output"] = str(tmp_path / "run")  # 192 training images and 64 test images in batches of 64
    reporter = Recording()
    train(spec_from_dict(tiny_doc), reporter=reporter)
    assert reporter.bars[:2] == [["teacher top-1", 1, 1], ["teacher cache", 3, 3]], reporter.bars
    assert [b[0] for b in reporter.bars[2:]] == ["epoch 1/2", "epoch 2/2"]
    assert all(total == done == 6 for _, total, done in reporter.bars[2:]), reporter.bars


def test_the_run_clock_counts_the_baseline_at_the_pace_of_the_steps_so_far():
    from kdgraph.session.progress import RunClock

    now = [0.0]
    clock = RunClock(now=lambda: now[0])
    clock.begin("quickstart", 30)  # 3 epochs of 10 steps
    clock.plan("quickstart-baseline", 30)
    assert clock.left() is None and clock.describe() is None  # nothing timed yet
    now[0] = 20.0
    clock.advance(10)  # 2 s a step
    assert clock.left() == (2.0 * 20 + 2.0 * 30, True)
    assert clock.describe() == "1m40s left (with the baseline)"
    now[0] = 60.0
    clock.advance(20)
    clock.begin("quickstart-baseline", 30)  # the baseline's own pace once it has steps
    now[0] = 65.0
    clock.advance(10)  # 0.5 s a step
    assert clock.left() == (0.5 * 20, False)
    assert clock.describe() == "10s left"
    now[0] = 80.0
    clock.advance(20)
    assert clock.describe() is None


def test_a_baseline_runs_epoch_lines_give_the_time_left_with_the_baseline(tmp_path, tiny_doc):
    from kdgraph.spec import spec_from_dict
    from kdgraph.train import train

    tiny_doc["train"]["baseline"] = True
    tiny_doc["output"] = str(tmp_path / "run")
    out = io.StringIO()
    train(spec_from_dict(tiny_doc), reporter=Reporter(console=Console(file=out, width=400, highlight=False)))
    epochs = [line for line in out.getvalue().splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 4  # 2 distilled, 2 baseline
    assert all(line.endswith("left (with the baseline)") for line in epochs[:2]), epochs
    assert epochs[2].endswith(" left") and epochs[3].endswith(" img/s"), epochs  # the last: nothing left
