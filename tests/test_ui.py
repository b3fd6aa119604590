"""ui.Progress in a log (stderr not a terminal): plain lines, the end said once."""

from budgetlm import ui


def test_progress_in_a_log_says_where_it_ended_once(capsys, monkeypatch):
    monkeypatch.setenv("BUDGETLM_PLAIN_PROGRESS", "1")
    with ui.Progress("job", total=10, every_s=0.0) as p:
        p.update(completed=4, status="step 4")
        p.update(completed=10, status="step 10")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("job")]
    assert len(lines) == 2 and "40%" in lines[0] and "100%" in lines[1], lines  # no repeat of the last line


def test_progress_writes_a_closing_line_when_the_last_update_was_not_written(capsys, monkeypatch):
    monkeypatch.setenv("BUDGETLM_PLAIN_PROGRESS", "1")
    with ui.Progress("job", total=10, every_s=0.0) as p:
        p.update(completed=4)
        p.every_s = 3600.0  # the next update is not written ...
        p.update(completed=10)
        p.every_s = 0.0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("job")]
    assert len(lines) == 2 and "100%" in lines[-1], lines  # ... so the exit writes it
