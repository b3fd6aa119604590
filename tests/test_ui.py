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


def test_a_table_written_to_a_log_keeps_its_names_whole(capsys, monkeypatch):
    """Not a terminal: rich would fit 80 columns and cut the names short; a log gets LOG_WIDTH."""
    monkeypatch.delenv("COLUMNS", raising=False)
    ui.set_json_mode(False)
    names = [f"nvidia-rtx-{i}-with-a-long-name" for i in range(3)]
    ui.table("options", ["devices", "model", "tokens", "time", "cost", "market", "precision", "fits"],
             [[n, "12 x 768 (91M)", "10.0B", "6h18m", "$5.04", "marketplace", "bf16", "yes"] for n in names])
    out = capsys.readouterr().out
    assert all(n in out for n in names) and "…" not in out
    monkeypatch.setenv("COLUMNS", "80")  # a width the user asked for wins
    ui.set_json_mode(False)
    ui.table("options", ["devices", "model", "tokens", "time", "cost", "market", "precision", "fits"],
             [[n, "12 x 768 (91M)", "10.0B", "6h18m", "$5.04", "marketplace", "bf16", "yes"] for n in names])
    assert not all(n in capsys.readouterr().out for n in names)
    monkeypatch.delenv("COLUMNS")
    ui.set_json_mode(False)  # the next test's console is made afresh
