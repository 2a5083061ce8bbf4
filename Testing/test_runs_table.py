"""benchmarks/runs_table.py: best and last validated epochs of training histories, and differences."""

from __future__ import annotations

from pathlib import Path

from conftest import run_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HEADER = "epoch,train_loss,val_dose_score,val_dvh_score,lr,slices_per_s,epoch_time_s,val_dvh_score_pooled\n"


def _history(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def _run(*args):
    return run_script(BENCH / "runs_table.py", *args)


def test_best_and_last_validated_epochs_and_diff(tmp_path):
    a = _history(
        tmp_path / "a_history.csv",
        [
            "1,0.5,nan,nan,1e-4,100,10,",
            "2,0.4,3.0,2.0,1e-4,200,10,1.9",
            "3,0.3,nan,nan,1e-4,300,10,",
            "4,0.2,2.5,1.8,1e-4,400,10,1.7",
            "5,0.1,2.6,1.6,0,500,10,1.5",
        ],
    )
    b = _history(tmp_path / "b.csv", ["1,0.5,2.0,1.0,1e-4,100,10,0.9", "2,0.4,2.2,1.1,0,300,10,1.0"])
    result = _run(a, f"bee={b}", "--diff", "a:bee")
    assert result.returncode == 0, result.stderr
    rows = {ln.split()[0]: ln.split() for ln in result.stdout.splitlines()[1:3]}
    # a: best epoch 4 (2.5), last validated epoch 5 (2.6); median slices/s after the first: 350
    assert rows["a"][:6] == ["a", "5", "4", "2.500", "1.800", "(1.700)"]
    assert rows["a"][7:11] == ["5", "2.600", "1.600", "(1.500)"] and rows["a"][-1] == "350"
    assert rows["bee"][2:4] == ["1", "2.000"]
    assert "bee - a: best dose -0.500 DVH -0.800; last dose -0.400 DVH -0.500 Gy" in result.stdout


def test_refusals_name_the_problem(tmp_path):
    a = _history(tmp_path / "a_history.csv", ["1,0.5,nan,nan,1e-4,100,10,"])
    none_validated = _run(a)
    assert none_validated.returncode != 0 and "a_history.csv: no validated epoch" in none_validated.stderr
    (tmp_path / "x.csv").write_text("foo,bar\n1,2\n")
    wrong = _run(tmp_path / "x.csv")
    assert wrong.returncode != 0 and "x.csv: not a training history" in wrong.stderr
    b = _history(tmp_path / "b_history.csv", ["1,0.5,2.0,1.0,1e-4,100,10,0.9"])
    bad_diff = _run(b, "--diff", "b:zz")
    assert bad_diff.returncode != 0 and "expected A:B, two run names" in bad_diff.stderr
