"""The reporter prints run messages as plain text: names from the spec are never read as rich markup."""

import io

from rich.console import Console

from kdgraph.train.progress import Reporter


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


def test_the_epoch_line_shows_the_weights_that_make_up_the_total():
    from kdgraph.train.progress import epoch_line

    row = {"epoch": 2, "loss/ce": 0.5, "loss/logits": 0.25, "loss/pair:block3->layer3": 0.125, "loss/total": 0.85,
           "train_top1": 0.8, "val_top1": 0.75, "images_per_s": 1234.4}
    weights = {"ce": 0.5, "logits": 0.9, "pair:block3->layer3": 1.0}
    assert epoch_line(row, weights) == ("epoch 2: 0.5×ce 0.5000  0.9×logits 0.2500  pair:block3->layer3 0.1250  "
                                        "total 0.8500  train 80.00%  val 75.00%  1234 img/s")
