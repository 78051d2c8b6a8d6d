"""Bad input of every kind (config, data, command line, stored files): one line naming the problem and the fix,
exit 2, no traceback."""

import socket

import numpy as np
import pytest

from memaudit.cli import main
from memaudit.data.poolfile import write_pool
from memaudit.data.splits import write_membership
from memaudit.testing import write_synthetic_scores
from tests.support.faults import record


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    synthetic = write_synthetic_scores(root / "scores", n_models=3, n_samples=40, n_checkpoints=2)
    write_pool(synthetic.pool, root / "pool.parquet")
    write_membership(synthetic.member, root / "member.npy")
    write_membership(synthetic.member[:, :30], root / "short.npy")
    (root / "garbage.parquet").write_bytes(b"PAR1 not really")
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip")
    (root / "bad.yaml").write_text("training: [1\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "afile").write_text("x")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    return root, closed


def _cases(root, closed) -> dict[str, tuple[list[str], str]]:
    """argv → the text the one line must hold."""
    pool, member = str(root / "pool.parquet"), str(root / "member.npy")
    return {
        "unknown preset": (["config", "show", "-p", "nope"], "unknown preset 'nope'"),
        "value out of range": (["config", "show", "--set", "training.epochs=-1"], "training.epochs"),
        "unknown key": (["config", "show", "--set", "nosuch.key=1"], "unknown config key 'nosuch'"),
        "override without =": (["config", "show", "--set", "training.epochs"], "has no '='"),
        "missing config file": (["config", "show", "-c", str(root / "none.yaml")], "not found"),
        "invalid YAML": (["config", "show", "-c", str(root / "bad.yaml")], "not valid YAML/JSON"),
        "config not a mapping": (["config", "show", "-c", str(root / "list.yaml")], "must hold a mapping"),
        "min_complete too small": (["config", "show", "--set", "shadows.min_complete=1"], "min_complete"),
        "too few shadows": (["config", "show", "--set", "shadows.n_shadows=2"], "n_shadows"),
        "autocast on bf16 weights": (
            ["config", "show", "-p", "arc-mistral", "--set", "model.autocast_bf16=true"],
            "set dtype float32",
        ),
        "missing pool": (["stage", "split", "--pool", str(root / "none.parquet"), "-o", str(root / "m")], "not found"),
        "corrupted pool": (
            ["stage", "split", "--pool", str(root / "garbage.parquet"), "-o", str(root / "m")],
            "not a readable parquet file",
        ),
        "membership of another pool": (
            [
                "stage",
                "finetune",
                "--pool",
                pool,
                "--members",
                str(root / "short.npy"),
                "--shadow",
                "0",
                "--output",
                str(root / "s0"),
            ],
            "covers 30 samples",
        ),
        "shadow out of range": (
            ["stage", "finetune", "--pool", pool, "--members", member, "--shadow", "9", "--output", str(root / "s9")],
            "shadow 9 out of range",
        ),
        "corrupted score file": (
            [
                "stage",
                "aggregate",
                "--pool",
                pool,
                "-o",
                str(root / "agg"),
                "--scores",
                str(root / "garbage.npz"),
                str(root / "scores" / "shadow-0.npz"),
            ],
            "corrupted",
        ),
        "no score files": (["stage", "aggregate", "--pool", pool, "-o", str(root / "agg")], "no score files given"),
        "missing aggregate folder": (["stage", "plot", "-a", str(root / "none"), "-o", str(root / "r")], "not found"),
        "missing data folder": (
            ["stage", "prepare", "-p", "arc-mistral", "-o", str(root / "p.parquet"), "--data-dir", str(root / "none")],
            "does not exist",
        ),
        "output is a file": (["run", "-p", "demo", "-o", str(root / "afile")], "is a file"),
        "unknown option": (["run", "--no-such-flag"], "No such option: --no-such-flag"),
        "missing option": (["stage", "split", "-o", str(root / "m")], "Missing option '--pool'"),
        "unreachable KFP API": (["submit", "--host", f"http://127.0.0.1:{closed}", "-p", "demo"], "cannot reach"),
    }


def test_each_bad_input_is_one_line_and_exit_2(files, capsys):
    root, closed = files
    cases = _cases(root, closed)
    outcomes = {}
    for name, (argv, needle) in cases.items():
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        outcomes[name] = exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and needle in err
        assert outcomes[name], (name, exc.value.code, err)
        assert err.startswith("error: ") and ("; fix: " in err or "--help" in err)
    assert len(cases) >= 20
    record("bad input (config, data, command line, stored files)", len(cases), sum(outcomes.values()))
    assert np.all(list(outcomes.values()))
