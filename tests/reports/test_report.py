"""python -m hpccnn.report on a real grid run, opened in a real headless browser (Debian's chromium)."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import read_json, refusal, run_module


def grid_folder(results: Path) -> Path:
    (folder,) = [p for p in results.glob("*/*") if (p / "grid.json").exists()]
    return folder


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("this machine has no chromium/chromedriver (scripts/install_system.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)  # the system driver: nothing downloaded
    yield browser
    browser.quit()


def open_report(browser, path: Path):
    browser.get(path.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.alt])")
    return images


@pytest.mark.slow
def test_grid_report_shows_every_table_and_figure_in_a_browser(digits_grid, browser, tmp_path):
    results, _, _, proc = digits_grid
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    folder = grid_folder(results)
    out = run_module("hpccnn.report", folder, timeout=600)
    assert out.returncode == 0, out.stderr
    page = folder / "report.html"
    text = page.read_text()
    assert not re.search(r'src="(?!data:image/png;base64,)', text), "the HTML must embed its images"

    images = open_report(browser, page)
    assert images and all(ok for ok, _ in images), [alt for ok, alt in images if not ok]
    alts = [alt for _, alt in images]
    # 12 runs x (curves, confusion matrix, misclassified) + the grid's validation curves
    assert len(alts) == 12 * 3 + 1
    assert sum("misclassified" in a for a in alts) == 12 and sum("confusion" in a for a in alts) == 12

    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid-table tbody tr')).map(r =>"
        " [r.className, Array.from(r.cells).map(c => c.textContent)])")
    assert len(rows) == 12
    header = browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid-table thead th')).map(c => c.textContent)")
    acc, trained = header.index("test accuracy"), header.index("epochs trained")
    # a halving grid: the points that trained longest first (the last rung's), each group by test accuracy
    order = [(int(cells[trained]), float(cells[acc])) for _, cells in rows]
    assert order == sorted(order, reverse=True) and [e for e, _ in order] == [3] * 4 + [1] * 8, order
    assert [cls for cls, _ in rows].count("best") == 1 and rows[0][0] == "best" and rows[0][1][0] == "★"
    # the halving's rungs (conftest.HALVING_ARGS): who was promoted after rung 0 and who stopped there
    (first, second) = read_json(folder / "grid.json")["halving"]["rungs"]
    rungs = browser.execute_script(
        "return Array.from(document.querySelectorAll('#rungs-table tbody tr')).map(r =>"
        " Array.from(r.cells).map(c => c.textContent))")
    stopped = [p for p in first["points"] if p not in second["points"]]
    assert rungs == [["0", "1", "12", ", ".join(second["points"]), ", ".join(stopped)],
                     ["1", "3", "4", "(the last rung)", "-"]], rungs
    assert len(stopped) == 8 and "40 rank-epochs trained, against 72 for every point to epoch 3." in text
    per_class = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.per-class')).map(t => t.tBodies[0].rows.length)")
    assert per_class == [10] * 12
    metrics = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.metrics tbody tr:nth-child(2)')).map(r => r.textContent)")
    assert len(metrics) == 12 and all("reported in the seed" not in m and "test accuracy 0.67" in m for m in metrics)
    body = browser.find_element("tag name", "body").text
    assert len(re.findall(r"Best class: \d \(F1 [\d.]+\); worst class: \d", body)) == 12
    # seed 001 reloads its best model: the figure from disk matches the one recorded in training
    match = re.search(r"Best model \((\S+)\) reloaded .* test accuracy ([\d.]+), recorded at training time ([\d.]+): "
                      r"the same\.", body)
    assert match and match.group(1) == rows[0][1][1] and match.group(2) == match.group(3), body[:3000]

    # the same report as Markdown, its images beside it
    md = (folder / "report.md").read_text()
    assert md.count("| 0") >= 12 and "reported in the seed" in md
    for name in re.findall(r"\]\(report_files/([^)]+)\)", md):
        assert (folder / "report_files" / name).stat().st_size > 1000

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1200, min(height, 6000))
    shot = Path(os.environ.get("HPCCNN_SCREENSHOT_DIR", tmp_path)) / "grid_report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10000


@pytest.mark.slow
def test_date_folder_report_covers_its_grids(digits_grid, browser):
    results, *_ = digits_grid
    (day,) = [p for p in results.iterdir() if p.is_dir()]
    out = run_module("hpccnn.report", day, "--no-reevaluate", timeout=600)
    assert out.returncode == 0, out.stderr
    images = open_report(browser, day / "report.html")
    assert len(images) == 12 * 3 + 1 and all(ok for ok, _ in images)


@pytest.mark.slow
def test_run_report_and_tensorboard_logs(tmp_path, browser):
    results = tmp_path / "results"
    train = run_module("hpccnn.train", "--experiment", "digits_cnn", "--epochs", "2", "--results-dir", results)
    assert train.returncode == 0, train.stderr
    (run,) = [p for p in results.glob("*/*") if p.is_dir()]
    out = run_module("hpccnn.report", run)
    assert out.returncode == 0 and "wrote" in out.stdout, out.stderr
    images = open_report(browser, run / "report.html")
    assert len(images) == 3 and all(ok for ok, _ in images)
    again = run_module("hpccnn.report", run)
    assert again.returncode == 0 and "replaced" in again.stdout  # said, never silent

    # TensorBoard reads rank 0's logs: one scalar per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard" / "train")).Reload()
    assert [e.step for e in events.Tensors("epoch_accuracy")] == [0, 1]
    history = read_json(run / "metrics.json")
    assert history["last_epoch"] == 2


BAD_PATHS = [
    (lambda tmp: tmp / "missing", "is not a folder"),
    (lambda tmp: tmp, "is not a run folder, a grid folder or a folder holding them"),
]


@pytest.mark.parametrize("make, message", BAD_PATHS)
def test_report_bad_path_is_refused(tmp_path, make, message):
    from hpccnn.reports import report

    assert message in refusal(report.main, make(tmp_path))
    assert not (tmp_path / "report.html").exists()


def test_report_bad_path_is_one_line(tmp_path):
    make, message = BAD_PATHS[1]
    proc = run_module("hpccnn.report", make(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "report.html").exists()


def confused(seed=0):
    """Predictions of 10 classes x 100 test images where class 6 goes to 0 most often (30), then 2 to 4
    (20, tied with 4 to 2: class order decides), then 9 to 7 (5): the rest right."""
    y_true = np.repeat(np.arange(10), 100)
    np.random.default_rng(seed).shuffle(y_true)
    y_pred = y_true.copy()
    for t, p, n in ((6, 0, 30), (4, 2, 20), (2, 4, 20), (9, 7, 5)):
        y_pred[np.flatnonzero(y_true == t)[:n]] = p
    return y_true, y_pred


def test_top_confusions_commonest_first_with_their_counts_and_first_images():
    from hpccnn.training.results import top_confusions

    y_true, y_pred = confused()
    groups = top_confusions(y_true, y_pred, 10, pairs=3, per_pair=8)
    assert [(g["true"], g["predicted"], g["count"], g["support"]) for g in groups] == [
        (6, 0, 30, 100), (2, 4, 20, 100), (4, 2, 20, 100)]
    first_six_to_zero = np.flatnonzero((y_true == 6) & (y_pred == 0))[:8]
    assert list(groups[0]["index"]) == list(first_six_to_zero)  # test-set order
    assert top_confusions(y_true, y_true, 10) == []  # nothing wrong, no rows


def test_run_report_names_the_commonest_confusions_from_the_files_a_run_writes(tmp_path):
    """Fashion-MNIST's report: 10 long class names, the confusions that matter first (table and figure)."""
    from hpccnn.reports import report
    from hpccnn.data.builtin import FASHION_MNIST_CLASSES as names
    from hpccnn.common.files import write_json
    from hpccnn.training.results import RunWriter

    y_true, y_pred = confused()
    images = np.random.default_rng(0).integers(0, 256, (len(y_true), 28, 28, 1), dtype=np.uint8)
    run = tmp_path / "fashion_mnist_cnn-120000-pid1"
    run.mkdir()
    RunWriter(run).evaluation(y_true, y_pred, names, images)
    write_json(run / "config.json", {"name": "fashion_mnist_cnn", "dataset": "fashion_mnist"})
    write_json(run / "metrics.json", {"status": "completed", "test_accuracy": float((y_true == y_pred).mean())})
    with np.load(run / "misclassified.npz") as m:  # the images of each pair, the commonest first
        assert list(m["pair_count"]) == [30, 20, 20, 5] and len(m["images"]) == 8 * 3 + 5
        assert list(m["true"][:8]) == [6] * 8 and list(m["predicted"][:8]) == [0] * 8
        assert (m["images"][:8] == images[m["index"][:8]]).all()

    built = report.build(run, None, False)
    page = "".join(built.html)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>",
                      page[page.index("Most frequent confusions"):])
    assert rows[:4] == [(names[6], names[0], "30", "30.0%"), (names[2], names[4], "20", "20.0%"),
                        (names[4], names[2], "20", "20.0%"), (names[9], names[7], "5", "5.0%")]
    assert "a row per confusion" in page

    # a run folder from before the counts were recorded: still reported, its commonest pairs first
    with np.load(run / "misclassified.npz") as m:
        old = {k: m[k] for k in ("images", "index", "true", "predicted", "classes")}
    np.savez_compressed(run / "misclassified.npz", **old)
    with np.load(run / "misclassified.npz") as m:
        ordered, groups = report.mistake_groups(m)
    assert [(g["true"], g["predicted"], g["count"]) for g in groups] == [(6, 0, None), (2, 4, None), (4, 2, None),
                                                                          (9, 7, None)]
    assert len(ordered) == 29
    assert "a row per confusion" in "".join(report.build(run, None, False).html)
