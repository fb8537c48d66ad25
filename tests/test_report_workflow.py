"""`snakemake --report <results>/report.zip` of the test run: galleries, labels and tables."""

from __future__ import annotations

import json
import re
import zipfile

import pandas as pd
import pytest

from tests.conftest import run_snakemake
from tests.test_explorer_browser import ARTIFACTS, browser  # noqa: F401 (the Chromium fixture)

pytestmark = pytest.mark.workflow

GALLERY_CATEGORIES = {
    "outliers_by_class": "2. Outliers per class",
    "final_outliers_by_concept": "3. Final outliers per top concept",
    "targets": "4. Target classes",
}
LABELS = {
    "rank",
    "class",
    "confidence",
    "global score",
    "class score",
    "outlier code",
    "caption",
    "top concept",
    "image",
}


def _script_json(page: str, name: str):
    match = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.DOTALL)
    assert match, name
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def report(workflow_run):
    workdir, config = workflow_run
    results = workdir / "results"
    target = results / "report.zip"
    run_snakemake(workdir, config, "--report", str(target))
    archive = zipfile.ZipFile(target)
    page = archive.read("report/report.html").decode("utf-8")
    return results, archive, _script_json(page, "results"), _script_json(page, "categories")


def test_report_holds_the_overview_tables_and_maps(report):
    results, archive, entries, categories = report
    by_name = {entry["name"]: (path, entry) for path, entry in entries.items()}
    for name in (
        "statistics.html",
        "timing.html",
        "tsne.png",
        "rejected_images.html",
    ):
        assert name in by_name, sorted(by_name)
    stats = json.loads((results / "statistics.json").read_text())
    statistics_page = archive.read("report/" + by_name["statistics.html"][1]["data_uri"]).decode()
    assert f"<td>total_objects</td>\n      <td>{stats['total_objects']}</td>" in statistics_page
    for name, count in stats["class_distribution"].items():
        assert f"<td>{name}</td>\n      <td>{count}</td>" in statistics_page
    timing_page = archive.read("report/" + by_name["timing.html"][1]["data_uri"]).decode()
    for rule in (
        "detect",
        "embed",
        "outliers",
        "export_results",
        "projection",
        "explorer",
        "report_galleries",
    ):
        assert f"<td>{rule}</td>" in timing_page
    rejected_page = archive.read(
        "report/" + by_name["rejected_images.html"][1]["data_uri"]
    ).decode()
    rejects = pd.read_csv(results / "rejected_images.csv")
    assert len(rejects) > 0
    for code in rejects["reason"].str.split(":").str[0].unique():
        assert f"<td>{code}</td>" in rejected_page
    assert by_name["tsne.png"][1]["mime_type"] == "image/png"
    assert "1. Overview" in categories


def test_report_holds_the_capped_labelled_galleries(report):
    results, archive, entries, categories = report
    index = json.loads((results / "report" / "galleries.json").read_text())
    assert {entry["gallery"] for entry in index.values()} == set(GALLERY_CATEGORIES)
    names = set(archive.namelist())
    crops = {path: entry for path, entry in entries.items() if entry["mime_type"] == "image/jpeg"}
    assert len(crops) == len(index)
    for _path, entry in crops.items():
        assert set(entry["labels"]) == LABELS
        assert all(
            isinstance(v, str) for v in entry["labels"].values()
        )  # the page sorts labels as text
        assert "report/" + entry["data_uri"] in names
        assert archive.read("report/" + entry["data_uri"])[:2] == b"\xff\xd8"  # a JPEG
    captions = [e["labels"]["caption"] for e in crops.values() if e["labels"]["caption"]]
    assert captions, "captioned crops carry their caption as a label"
    for gallery, category in GALLERY_CATEGORIES.items():
        groups = categories[category]
        expected = {entry["group"] for entry in index.values() if entry["gallery"] == gallery}
        assert set(groups) == expected
        for _group, items in groups.items():
            assert 1 <= len(items) <= 24  # report.max_per_group (default)
    detections = pd.concat(
        pd.read_parquet(p) for p in sorted((results / "tables" / "detections").glob("*.parquet"))
    )
    classes = detections.set_index("object_id")["class_name"]
    for entry in index.values():
        assert entry["labels"]["class"] == classes[entry["object_id"]]
    targets = {entry["group"] for entry in index.values() if entry["gallery"] == "targets"}
    assert targets <= {"construction_vehicle", "bicycle", "motorcycle", "trailer"} and targets


def _with(config: dict, section: str, **values) -> dict:
    return {**config, section: {**config.get(section, {}), **values}}


def test_view_settings_rerun_only_their_rules(workflow_run):
    from tests.conftest import planned_jobs

    workdir, config = workflow_run
    timing = {"write_timing", "report_overview", "all"}
    assert (
        set(planned_jobs(workdir, _with(config, "projection", method="umap")))
        == {"projection", "explorer"} | timing
    )
    assert (
        set(planned_jobs(workdir, _with(config, "explorer", thumbnail_size=32)))
        == {"explorer"} | timing
    )
    assert (
        set(planned_jobs(workdir, _with(config, "report", max_per_group=3)))
        == {"report_galleries"} | timing
    )


def test_report_galleries_open_in_the_browser(report, browser, tmp_path):
    """The unzipped report in Chromium: a gallery's table lists its crops by their labels, without page errors."""
    results, archive, entries, categories = report
    archive.extractall(tmp_path)
    group, items = sorted(categories["2. Outliers per class"].items())[0]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((tmp_path / "report" / "report.html").as_uri())
    page.get_by_text("2. Outliers per class").first.click()
    page.get_by_text(group, exact=True).first.click()
    page.get_by_text("top concept", exact=True).first.wait_for(timeout=15_000)
    first = entries[items[0]]["labels"]
    rows = page.locator("tr", has_text=first["image"])
    assert rows.count() >= 1
    rows.first.locator("a, button").first.click()  # the row's "view" button shows the crop
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].some((i) => i.src.includes('/data/raw/') && i.naturalWidth > 0)",
        timeout=15_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-gallery.png"))
    print(f"report screenshot: {ARTIFACTS / 'report-gallery.png'}")
    assert not errors, errors
    page.close()
