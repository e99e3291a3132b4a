"""The lessons as a reader meets them: every image a page links exists, every lesson page shows a
figure, notebook and page list the same exercises; and the figure helpers of minidetr.lessons."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import nbformat
import pytest

from minidetr.lessons import (
    FIGURES_ENV,
    image_links,
    main,
    missing_images,
    save_animation,
    save_figure,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "tutorial").glob("*.md"))
LESSON_PAGES = [p for p in PAGES if re.match(r"\d\d_", p.name)]
MAX_FIGURE_BYTES = 150_000  # a page of figures should load quickly on the repository's site


def test_every_image_a_page_links_exists():
    assert PAGES, "no tutorial pages found"
    assert missing_images(PAGES + [ROOT / "README.md"]) == []


@pytest.mark.parametrize("page", LESSON_PAGES, ids=lambda p: p.stem)
def test_every_lesson_page_shows_a_figure_of_its_own(page):
    number = page.name[:2]
    own = [link for link in image_links(page.read_text()) if f"figures/{number}_" in link]
    assert own, f"{page.name} embeds no figures/{number}_*.png"


def test_figures_are_named_by_lesson_and_small():
    figures = sorted((ROOT / "tutorial" / "figures").glob("*"))
    assert figures
    for path in figures:
        assert re.match(r"^\d\d_[a-z0-9_]+\.(png|gif)$", path.name), path.name
        assert 0 < path.stat().st_size <= MAX_FIGURE_BYTES, (path.name, path.stat().st_size)


def _exercises(markdown: str) -> list[str]:
    """The numbered items under '## Exercises', whitespace collapsed."""
    section = re.split(r"^## Exercises\s*$", markdown, flags=re.MULTILINE)
    if len(section) < 2:
        return []
    body = re.split(r"^#{1,2} ", section[1], flags=re.MULTILINE)[0]
    items = re.split(r"^\d+\.\s", body, flags=re.MULTILINE)[1:]
    return [" ".join(item.split()) for item in items]


def _notebook_markdown(path: Path) -> str:
    cells = nbformat.read(path, as_version=4).cells
    return "\n\n".join(c.source for c in cells if c.cell_type == "markdown")


@pytest.mark.parametrize("page", LESSON_PAGES, ids=lambda p: p.stem)
def test_notebook_and_page_list_the_same_exercises(page):
    notebook = ROOT / "notebooks" / f"{page.stem}.ipynb"
    if not notebook.exists():
        pytest.skip(f"{page.name} has no notebook")
    listed = _exercises(page.read_text())
    hint = "page and notebook end with the same numbered '## Exercises' list (any line wrapping)"
    assert listed, f"{page.name} lists no exercises: {hint}"
    assert listed == _exercises(_notebook_markdown(notebook)), hint


def test_image_links_reads_markdown_and_html_and_skips_code_and_web():
    page = """![a plot](figures/01_a.png) and ![b]( <figures/01_b.png> "title")
<img src="figures/01_c.gif" width=300> ![web](https://example.org/x.png) `![x](01_no.png)`
```
![in code](figures/01_not.png)
```
"""
    assert image_links(page) == ["figures/01_a.png", "figures/01_b.png", "figures/01_c.gif"]


def test_missing_images_names_page_and_link(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "09_here.png").write_bytes(b"png")
    page = tmp_path / "09_page.md"
    page.write_text("![here](figures/09_here.png)\n![gone](figures/09_gone.png)\n")
    assert missing_images([page]) == [f"{page}: figures/09_gone.png"]


def test_save_figure_writes_only_when_asked(tmp_path, monkeypatch):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    monkeypatch.delenv(FIGURES_ENV, raising=False)
    assert save_figure(fig, "09_line") is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(FIGURES_ENV, str(tmp_path / "figures"))
    path = save_figure(fig, "09_line")
    assert path == tmp_path / "figures" / "09_line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_save_animation_writes_every_frame(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv(FIGURES_ENV, str(tmp_path))
    fig, ax = plt.subplots(figsize=(2, 2))
    (line,) = ax.plot([0, 1], [0, 0])
    path = save_animation(fig, lambda i: line.set_ydata([0, i]), 3, "09_moving")
    assert Image.open(path).n_frames == 3
    plt.close(fig)


@pytest.mark.parametrize("name", ["sampling_points", "5_points", "05_Points", "05_a.png", 5])
def test_a_figure_name_must_say_its_lesson(name):
    fig = plt.figure()
    with pytest.raises(ValueError, match="name must look like"):
        save_figure(fig, name)
    plt.close(fig)


def test_figures_command_outside_the_repository_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such notebook" in err
