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
