"""fsio: atomic writes, the write guard (outputs vs inputs, markers, --overwrite), folder locks."""

import json
import os
import subprocess
import sys

import pytest

from budgetlm import fsio
from budgetlm.config import BudgetError


def test_atomic_file_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "a.json"
    fsio.atomic_write_json(path, {"x": 1})
    with pytest.raises(RuntimeError):
        with fsio.atomic_file(path) as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_swaps_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with fsio.atomic_dir(out) as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(RuntimeError), fsio.atomic_dir(out, replace=True) as tmp:
        (tmp / "f").write_text("2")
        raise RuntimeError("crash")
    assert (out / "f").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError), fsio.atomic_dir(out):
        pass


@pytest.mark.parametrize("rel", ["same", "inside", "contains"])
def test_an_output_is_never_an_input(tmp_path, rel):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    out = {"same": src, "inside": src / "sub" / "out", "contains": tmp_path}[rel]
    with pytest.raises(BudgetError, match="the input"):
        fsio.check_output(out, [src], "export")


def test_a_marker_being_written_counts_as_bookkeeping(tmp_path):
    """Under torchrun rank 0 writes the run folder's marker (through a temporary) while the other
    ranks check the folder: that temporary alone does not make the folder 'not empty'."""
    out = tmp_path / "run"
    out.mkdir()
    fsio.temp_name(out / fsio.MARKER).write_text("{")  # another process, mid-write
    (out / fsio.LOCK).write_text("")
    assert fsio.check_output(out, [], "train") == out.resolve()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(BudgetError, match="not empty"):
        fsio.check_output(out, [], "train")


def test_overwrite_replaces_only_a_folder_of_the_same_kind(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(BudgetError, match="not a folder budgetlm made"):
        fsio.check_output(user, [], "export", overwrite=True)
    made = tmp_path / "made"
    made.mkdir()
    (made / "x").write_text("1")
    fsio.write_marker(made, "dataset")
    with pytest.raises(BudgetError, match="budgetlm dataset folder"):
        fsio.check_output(made, [], "export", overwrite=True)
    with pytest.raises(BudgetError, match="--overwrite"):
        fsio.check_output(made, [], "dataset")
    assert fsio.check_output(made, [], "dataset", overwrite=True) == made.resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(BudgetError, match="is a file"):
        fsio.check_output(tmp_path / "file", [], "export", overwrite=True)
    assert (user / "notes.txt").read_text() == "precious"


def test_folder_lock_refuses_a_second_writer(tmp_path):
    with fsio.FolderLock(tmp_path / "run"):
        code = ("import sys; from budgetlm import fsio\n"
                "try:\n    fsio.FolderLock(sys.argv[1]).__enter__()\n"
                "except Exception as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
        assert proc.returncode == 3 and f"process {os.getpid()}" in proc.stdout
    with fsio.FolderLock(tmp_path / "run"):  # released: the next writer gets it
        pass


def test_space_error_names_the_device_and_the_need(tmp_path):
    import errno

    e = fsio.space_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path, 5_000_000)
    assert isinstance(e, BudgetError) and "no space left" in str(e) and "5 MB" in str(e)
    assert fsio.space_error(OSError(errno.EACCES, "denied"), tmp_path) is None
