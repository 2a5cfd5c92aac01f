"""python -m hpccnn.report on a real grid run, opened in a real headless browser (Debian's chromium)."""

import os
import re
import shutil
from pathlib import Path

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
    acc = header.index("test accuracy")
    accuracies = [float(cells[acc]) for _, cells in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert [cls for cls, _ in rows].count("best") == 1 and rows[0][0] == "best" and rows[0][1][0] == "★"
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
    from hpccnn import report

    assert message in refusal(report.main, make(tmp_path))
    assert not (tmp_path / "report.html").exists()


def test_report_bad_path_is_one_line(tmp_path):
    make, message = BAD_PATHS[1]
    proc = run_module("hpccnn.report", make(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "report.html").exists()
