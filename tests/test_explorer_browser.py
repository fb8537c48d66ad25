"""explorer.html of a workflow run, opened from file:// in a real headless Chromium.

Debian's ``chromium`` (installed by .ci/install-chromium.sh, which ``make test``
runs as root), driven by playwright through ``executable_path``: no browser is
downloaded. Without a browser the test is skipped on a developer machine and
fails under CI=true. The screenshot is kept in tests/.artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

ARTIFACTS = Path(__file__).resolve().parent / ".artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

# The plot view of the map, found from Bokeh's root views; the screen position of point i.
FIND_POINT_JS = """
(i) => {
  const doc = Bokeh.documents[0];
  const plot = doc.get_model_by_name('map');
  let view = null;
  const walk = (v) => { if (!v || view) return; if (v.model === plot) { view = v; return; }
                        for (const c of (v.child_views || [])) walk(c); };
  for (const root of Bokeh.index.roots) walk(root);
  const d = doc.get_model_by_name('points').data_source.data;
  const box = view.canvas_view.el.getBoundingClientRect();
  const px = (k) => [box.left + view.frame.x_scale.compute(d.x[k]), box.top + view.frame.y_scale.compute(d.y[k])];
  const [x, y] = px(i);
  let nearest = Infinity;  // distance to the nearest other point, so that the pointer hits this one alone
  for (let k = 0; k < d.x.length; k++) {
    if (k === i) continue;
    const [a, b] = px(k);
    nearest = Math.min(nearest, Math.hypot(a - x, b - y));
  }
  const inside = x > box.left + view.frame.bbox.left + 8 && x < box.left + view.frame.bbox.right - 8 &&
                 y > box.top + view.frame.bbox.top + 8 && y < box.top + view.frame.bbox.bottom - 8;
  return {x, y, nearest, inside};
}
"""


def chromium_executable() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        executable, missing = None, f"playwright is not installed ({error})"
    else:
        missing = "no chromium executable (run .ci/install-chromium.sh as root)"
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser test: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def check_explorer(browser, html: Path, object_ids, name: str) -> Path:
    """Open ``html`` from file://; check points, hover, click, filters, no errors, no network.
    Returns the screenshot's path."""
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    problems, requests = [], []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri())
    page.wait_for_function(
        "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.index.roots.length > 0"
    )
    page.wait_for_function("() => [...Bokeh.index.roots].every((v) => v.is_idle)", timeout=30_000)

    points = page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('points').data_source.get_length()"
    )
    assert points == len(object_ids)
    data = page.evaluate("""() => { const d = Bokeh.documents[0].get_model_by_name('points').data_source.data;
                                    return {flag: [...d.flag], caption: [...d.caption], object_id: [...d.object_id],
                                            sprite_url: [...d.sprite_url]}; }""")
    frame = pd.DataFrame(data)
    assert set(frame["object_id"]) == set(object_ids)
    captioned_outliers = frame.index[
        frame["flag"].isin(["outlier", "final outlier"]) & (frame["caption"].str.len() > 0)
    ]
    assert len(captioned_outliers), "the run has captioned outliers"

    # The captioned outlier that stands most apart, so that the pointer hits it alone.
    spots = {int(i): page.evaluate(FIND_POINT_JS, int(i)) for i in captioned_outliers}
    index, spot = max(
        ((i, s) for i, s in spots.items() if s["inside"]), key=lambda item: item[1]["nearest"]
    )
    assert spot["nearest"] > 5, spot
    caption = frame.loc[index, "caption"]
    sheet_url = frame.loc[index, "sprite_url"]
    assert sheet_url.startswith("explorer_files/sheet-")

    page.mouse.move(spot["x"], spot["y"])
    page.get_by_text(f"caption: {caption}", exact=False).first.wait_for(
        state="visible", timeout=10_000
    )
    tooltip_crops = page.evaluate(
        """(url) => { const out = []; const walk = (root) => {
        for (const el of root.querySelectorAll('div')) { if (el.shadowRoot) walk(el.shadowRoot);
          if ((el.getAttribute('style') || '').includes(url)) out.push(el.getBoundingClientRect().width); } };
        walk(document); return out; }""",
        sheet_url,
    )
    assert tooltip_crops and max(tooltip_crops) > 0  # the hover shows the crop

    page.mouse.click(spot["x"], spot["y"])
    details = page.locator(".explorer-details")
    details.wait_for(state="visible", timeout=10_000)
    assert details.get_attribute("data-object-id") == frame.loc[index, "object_id"]
    assert caption.strip()[:40] in page.locator(".explorer-caption").inner_text()
    assert sheet_url in page.locator(".explorer-crop").get_attribute("style")
    # The crop's sprite sheet really loads from beside the page.
    loaded = page.evaluate(
        """(url) => new Promise((done) => { const im = new Image();
        im.onload = () => done(im.naturalWidth); im.onerror = () => done(0); im.src = url; })""",
        sheet_url,
    )
    assert loaded > 0

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(shot))
    print(f"explorer screenshot: {shot}")

    # Filters: tick off two flags; the counter follows.
    page.get_by_text(f"{points} of {points} points shown").wait_for()
    for label in ("target match", "other"):
        page.get_by_label(label, exact=True).uncheck()
    expected = int(frame["flag"].isin(["outlier", "final outlier"]).sum())
    page.get_by_text(f"{expected} of {points} points shown").wait_for(timeout=10_000)
    page.get_by_label("other", exact=True).check()
    expected += int((frame["flag"] == "other").sum())
    page.get_by_text(f"{expected} of {points} points shown").wait_for(timeout=10_000)

    offsite = [url for url in requests if not url.startswith(("file://", "data:", "blob:"))]
    assert not offsite, offsite
    assert not problems, problems
    page.close()
    return shot


@pytest.mark.workflow
def test_explorer_of_a_workflow_run_opens_offline_and_shows_an_outlier(workflow_run, browser):
    workdir, _ = workflow_run
    results = workdir / "results"
    projection = pd.read_parquet(results / "tables" / "projection.parquet")
    outliers = pd.read_parquet(results / "tables" / "outliers.parquet")
    assert len(projection) == len(
        outliers
    )  # the test run is below the cap: every object is on the map
    check_explorer(
        browser, results / "explorer.html", projection["object_id"], "explorer-workflow-run"
    )


def test_explorer_with_a_sampled_map_in_the_browser(tmp_path, browser):
    """A generated run whose map is capped below its object count (fast; no models)."""
    from rare_objects.io import images
    from rare_objects.report import explorer, projection
    from tests.test_report import TARGETS, make_run

    run = make_run(tmp_path / "in", n_images=40, per_image=10, seed=5)
    settings = {
        "method": "tsne",
        "max_points": 300,
        "perplexity": 30,
        "umap_n_neighbors": 15,
        "umap_min_dist": 0.1,
    }
    shown = projection.project(
        run["embeddings"],
        run["outlier_table"],
        run["concepts"],
        TARGETS,
        settings,
        seed=0,
        threads=1,
    )
    assert len(shown) == 300 < len(run["outlier_table"])
    results = tmp_path / "results"
    results.mkdir()
    explorer.build_explorer(
        shown,
        run["detections"],
        run["outliers"],
        run["captions"],
        run["concepts"],
        TARGETS,
        results / "explorer.html",
        results / "explorer_files",
        images.open_rgb,
        total_objects=len(run["outlier_table"]),
        thumbnail_size=48,
        per_sheet=64,
    )
    check_explorer(browser, results / "explorer.html", shown["object_id"], "explorer-sampled-map")
