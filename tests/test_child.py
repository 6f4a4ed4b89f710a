"""A derivation's child process as a batch job sees it: its progress in a log file."""

from harness.sources.child import progress


def test_progress_in_a_log_file_is_a_plain_line_at_the_start_then_a_minute_apart_and_at_the_end(capsys):
    """rich draws nothing on a stream that is not a terminal until the display stops, which for a training is an
    hour of silence in a nightly job's log: there the display prints plain lines instead."""
    with progress("loss") as shown:
        bar = shown.add_task("training", total=3, loss="")
        for step in range(3):
            shown.update(bar, advance=1, loss=f"loss {5 - step:.3f}")
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("training: 1/3 in ") and line.endswith("loss 5.000") for line in lines)
    assert any(line.startswith("training: 3/3 in ") and line.endswith("loss 3.000") for line in lines)
    assert not any(line.startswith("training: 2/3") for line in lines)  # within the minute
