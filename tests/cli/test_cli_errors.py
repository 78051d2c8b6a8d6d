"""File-system problems at the command line: one line naming the path and the fix, exit 2, nothing half-written."""

import errno
from pathlib import Path

import numpy as np
import pytest

from memaudit.cli import main
from memaudit.data.poolfile import write_pool
from memaudit.testing import write_synthetic_scores


def _exit_code(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return exc.value.code, err


def test_an_output_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    code, err = _exit_code(capsys, ["run", "--preset", "demo", "--output", str(tmp_path / "out")])
    assert (
        code == 2
        and err == f"error: output {tmp_path / 'out'} is a file; fix: pass a folder path (it is created when missing)"
    )


def test_an_output_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    def refuse(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    code, err = _exit_code(capsys, ["run", "--preset", "demo", "--output", str(tmp_path / "out")])
    assert code == 2 and "cannot be written (Permission denied); fix: pass a folder you may write" in err


def test_an_output_file_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _exit_code(capsys, ["stage", "prepare", "-p", "demo", "-o", str(tmp_path / "afile" / "pool.parquet")])
    assert code == 2 and err.startswith(f"error: cannot use {tmp_path / 'afile'}")


def test_a_full_disk_during_a_write_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    synthetic = write_synthetic_scores(tmp_path / "scores", n_models=3, n_samples=40, n_checkpoints=2)

    pool = write_pool(synthetic.pool, tmp_path / "pool.parquet")

    def full(handle, *args, **kwargs):
        handle.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    out = tmp_path / "member" / "member.npy"
    code, err = _exit_code(capsys, ["stage", "split", "-p", "demo", "--pool", str(pool), "-o", str(out)])
    assert code == 2 and "No space left on device; fix: free some disk space" in err
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary
