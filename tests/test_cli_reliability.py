"""The ``minidetr`` command run as a user runs it: exit codes, one-line errors, honest claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minidetr.cli import main
from minidetr.inference import output_names
from minidetr.train.checkpoint import load_checkpoint
from minidetr.train.loop import Run, TrainConfig

COMMAND = str(Path(sys.executable).parent / "minidetr")
TINY = ["train", "--preset", "tiny", "--batch-size", "2"]


def minidetr(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(
        [COMMAND, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error line of a failed command, checked to be alone on its line, without traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "error:" in last and result.stderr.endswith(last + "\n")
    return last


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--batch-size", "-4"], "argument --batch-size: must be an integer >= 1, got -4"),
        (["--steps", "-3"], "argument --steps: must be an integer >= 1, got -3"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
        (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
        (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
        (["--lr=-1e-3"], "argument --lr: must be a finite number > 0, got -1e-3"),
        (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
        (["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    ],
)
def test_train_options_out_of_range_name_the_option(argv, message):
    assert message in one_line_error(minidetr("train", *argv))


def test_threshold_outside_zero_one_is_refused(tmp_path):
    line = one_line_error(minidetr("predict", "x.npz", "a.png", "--threshold", "1.5"))
    assert "argument --threshold: must be a number in [0, 1], got 1.5" in line


def test_help_shows_the_defaults_and_no_markup():
    top = minidetr("--help").stdout
    assert "``" not in top and "Train a tiny DETR" in top
    text = " ".join(minidetr("train", "--help").stdout.split())
    cfg = TrainConfig()  # the help states the training config's own defaults
    for value in (cfg.steps, cfg.batch_size, cfg.lr, cfg.seed):
        assert f"(default {value})" in text


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    assert f"--out {file} is a file, not a folder" in one_line_error(
        minidetr(*TINY, "--out", str(file))
    )
    line = one_line_error(minidetr(*TINY, "--out", str(file / "run")))
    assert f"{file} is a file, not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_out_that_is_not_writable_is_refused_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = one_line_error(minidetr(*TINY, "--out", str(locked)))
    finally:
        locked.chmod(0o700)
    assert "is not writable" in line


def test_an_unwritable_folder_is_found_by_trying(tmp_path, monkeypatch):
    import tempfile

    from minidetr.options import UserError, output_folder

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=r"--out .* is not writable \(Permission denied\)"):
        output_folder(tmp_path)


def test_a_diverging_run_says_so_in_one_line_and_claims_no_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = minidetr(*TINY, "--steps", "3", "--lr", "1000", "--out", str(out))
    line = one_line_error(result)
    assert "training stopped at step 1: the loss exploded" in line
    assert "learning rate 1000 is too large" in line and "smaller --lr" in line
    assert "no checkpoint was written" in line
    assert "\r" not in result.stderr  # not a terminal: plain progress lines, not a bar
    assert not (out / "checkpoint.npz").exists()


def test_a_run_logs_plain_lines_and_names_only_the_files_it_wrote(tmp_path):
    out = tmp_path / "run"
    result = minidetr(*TINY, "--steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "step 1/2 loss" in result.stderr and "step 2/2 loss" in result.stderr
    written = result.stdout.strip().splitlines()[-1].split("{")[1].rstrip("}").split(", ")
    assert all((out / name).is_file() for name in written) and "checkpoint.npz" in written
    again = one_line_error(minidetr("train", "--resume", "--out", str(out)))
    assert "is already at step 2; pass --steps above 2" in again
    # predict: two inputs of the same stem get two outputs
    import matplotlib.image

    picture = np.random.default_rng(0).random((40, 50, 3))
    for name in ("a.png", "a.jpg"):
        matplotlib.image.imsave(tmp_path / name, picture)
    predicted = minidetr(
        "predict",
        str(out / "checkpoint.npz"),
        str(tmp_path / "a.png"),
        str(tmp_path / "a.jpg"),
        "--out",
        str(tmp_path / "pred"),
    )
    assert predicted.returncode == 0, predicted.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "a_jpg_pred.png",
        "a_png_pred.png",
    ]


def test_output_names_are_distinct():
    assert output_names(["x/a.png", "b.png"]) == ["a_pred.png", "b_pred.png"]
    assert output_names(["a.png", "a.jpg"]) == ["a_png_pred.png", "a_jpg_pred.png"]
    assert output_names(["x/a.png", "y/a.png", "c.png"]) == [
        "a_png_1_pred.png",
        "a_png_2_pred.png",
        "c_pred.png",
    ]


# ---------------------------------------------------------------- in process, with faults


def test_an_interrupt_during_start_up_claims_no_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(self, cfg, like):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "__init__", interrupted)
    assert main([*TINY, "--steps", "2", "--quiet", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "nothing was saved" in err and "checkpoint saved" not in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_fault_injected_at_step_4_exits_2_naming_the_step_2_checkpoint(
    tmp_path, monkeypatch, capsys
):
    original = Run.train_step

    def faulty(self):
        if self.step == 4:
            self.params["class_head.bias"] = self.params["class_head.bias"] * np.float32(np.nan)
        return original(self)

    monkeypatch.setattr(Run, "train_step", faulty)
    out = tmp_path / "run"
    argv = [*TINY, "--steps", "6", "--checkpoint-every", "2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert err.endswith(last + "\n") and last.startswith("minidetr: error: training stopped")
    assert "step 4:" in last and "must be finite" in last and "likely cause" in last
    assert f"the last good checkpoint is {out / 'checkpoint.npz'} (step 2)" in last
    assert load_checkpoint(out / "checkpoint.npz").meta["step"] == 2


def test_a_library_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(self):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(Run, "train_step", broken)
    with pytest.raises(ValueError, match="an internal shape mismatch"):
        main([*TINY, "--steps", "2", "--quiet", "--out", str(tmp_path / "run")])


def test_digits_without_scikit_learn_says_how_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else find_spec(name)
    )
    assert main([*TINY, "--dataset", "digits", "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'minidetr[data]'" in capsys.readouterr().err


def test_a_folder_that_fills_up_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    from minidetr.train import loop

    out = tmp_path / "run"

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "checkpoint.npz.x1.tmp"))

    monkeypatch.setattr(loop, "save_checkpoint", full)
    assert main([*TINY, "--steps", "2", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err


def test_resuming_a_checkpoint_of_another_config_is_one_line(tmp_path, capsys):
    from minidetr.train.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert main([*TINY, "--steps", "2", "--quiet", "--out", str(out)]) == 0
    ck = load_checkpoint(out / "checkpoint.npz")
    meta = {**ck.meta, "train_config": {**ck.meta["train_config"], "unknown_option": 1}}
    save_checkpoint(out / "checkpoint.npz", ck.params, ck.opt_state, meta)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--steps", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "made with another training config" in err


def test_an_interrupt_while_evaluating_names_the_saved_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "evaluate", interrupted)
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "2", "--quiet", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"the checkpoint {out / 'checkpoint.npz'} (step 2) is saved" in err
    assert load_checkpoint(out / "checkpoint.npz").meta["step"] == 2
