"""The minidetr command as a user meets it: files written, one-line errors, no tracebacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minidetr.cli import main

TRAIN = ["train", "--preset", "tiny-deformable", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--steps", "3", "--out", str(out), "--force"]) == 0
    return out


def test_train_writes_checkpoint_metrics_and_pictures(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"checkpoint.npz", "metrics.json", "loss.png", "predictions.png"} <= names
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "final_loss", "steps", "seconds", "device", "preset"):
        assert key in metrics
    assert metrics["steps"] == 3 and metrics["device"] == "cpu"
    assert 0.0 <= metrics["AP50"] <= 1.0


def test_refuses_a_folder_holding_another_run(trained, capsys):
    assert main([*TRAIN, "--steps", "3", "--out", str(trained)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run" in err and "--resume" in err


def test_resume_extends_the_run(trained, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    assert main(["train", "--resume", "--out", str(out), "--steps", "4", "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert main(["train", "--resume", "--out", str(out), "--seed", "9", "--quiet"]) == 2
    assert "differs from the run's" in capsys.readouterr().err


def test_eval_and_predict(trained, tmp_path, capsys):
    assert main(["eval", str(trained / "checkpoint.npz")]) == 0
    assert "AP50" in json.loads(capsys.readouterr().out)
    import matplotlib.image

    picture = tmp_path / "picture.png"
    matplotlib.image.imsave(picture, np.random.default_rng(0).random((40, 50, 3)))
    assert (
        main(["predict", str(trained / "checkpoint.npz"), str(picture), "--out", str(tmp_path)])
        == 0
    )
    assert (tmp_path / "picture_pred.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "missing.npz"], "does not exist"),
        (["train", "--resume", "--quiet"], "--resume needs --out"),
    ],
)
def test_user_mistakes_get_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and "Traceback" not in err


def test_corrupt_checkpoint_and_unreadable_image(trained, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("hello")
    out = tmp_path / "predictions"
    assert main(["predict", str(trained / "checkpoint.npz"), str(text), "--out", str(out)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not out.exists()  # a failed command leaves no empty folder behind


def test_unknown_preset_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_cuda_without_cupy_says_how_to_install(tmp_path, capsys):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    out = tmp_path / "unused"
    assert main(["train", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'minidetr[gpu]'" in err and err.count("\n") == 1
    assert not out.exists()  # refused before the output folder is made
