"""The interactive explorer: one HTML file that opens from the file system.

It is bokeh's standalone output with its JavaScript inlined (``INLINE``
resources: no server, no network), a WebGL scatter of the projection's
points, an HTML hover tooltip and a details panel on click, a "colour by"
choice (class, flag, top concept) and filters by class and flag.

The crops shown are thumbnails (``thumbnail_size`` pixels on the longer
side) packed into a few sprite sheets beside the page (``explorer_files/``,
``per_sheet`` thumbnails each), written only for the objects on the map: a
run of 20 million objects with the default cap of 100,000 points writes
about a hundred sheet files, never one file per object.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rare_objects.io import atomic
from rare_objects.report.shown_objects import (
    final_outlier_mask,
    first_flag,
    iter_crops,
    object_rows,
)

log = logging.getLogger("rare_objects.report.explorer")

FLAGS = ("final outlier", "outlier", "target match", "other")
COLOUR_BY = {"class": "class_name", "flag": "flag", "top concept": "top_concept"}
NO_CONCEPT = "(no caption)"
DETECTION_COLUMNS = [
    "object_id",
    "image_path",
    "sample_token",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
]
SCORE_COLUMNS = ["object_id", "score_global", "score_class", "outlier_code"]


def explorer_frame(
    projection: pd.DataFrame,
    detection_paths,
    outlier_paths,
    captions: pd.DataFrame | None,
    concepts: pd.DataFrame | None,
    targets: dict[str, list[str]],
) -> pd.DataFrame:
    """One row per point of the map with everything the page shows, in the projection's order."""
    from rare_objects.stages.targets import target_matches

    frame = projection.reset_index(drop=True)
    ids = frame["object_id"]
    details = (
        object_rows(detection_paths, ids, DETECTION_COLUMNS).set_index("object_id").reindex(ids)
    )
    scores = (
        object_rows(
            [outlier_paths] if isinstance(outlier_paths, (str, os.PathLike)) else outlier_paths,
            ids,
            SCORE_COLUMNS,
        )
        .set_index("object_id")
        .reindex(ids)
    )
    for column in DETECTION_COLUMNS[1:]:
        frame[column] = details[column].to_numpy()
    for column in SCORE_COLUMNS[1:]:
        frame[column] = scores[column].to_numpy()
    caption = (
        captions.set_index("object_id")["description"]
        if captions is not None and len(captions)
        else pd.Series(dtype=object)
    )
    frame["caption"] = caption.reindex(ids).to_numpy()
    if concepts is not None and len(concepts):
        frame["top_concept"] = (
            concepts.set_index("object_id")["top_concept"].reindex(ids).to_numpy()
        )
    else:
        frame["top_concept"] = None
    matches = target_matches(frame["class_name"], targets)
    frame["target_matches"] = matches.map(", ".join)
    frame["flag"] = first_flag(
        final_outlier_mask(concepts, ids),
        frame["is_outlier"].to_numpy(dtype=bool),
        matches.map(bool).to_numpy(),
        FLAGS,
    )
    return frame


def write_sprites(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike,
    open_image,
    size: int = 64,
    per_sheet: int = 1024,
    workers: int = 2,
    quality: int = 80,
) -> pd.DataFrame:
    """Thumbnails of ``frame``'s objects packed into JPEG sprite sheets in ``out_dir``.

    Returns, aligned with ``frame``'s index, ``sheet`` (file name, or None when
    the crop could not be cut), ``sprite_x``/``sprite_y`` (the cell's top-left
    pixel) and ``thumb_w``/``thumb_h``. Each original image is decoded once;
    memory is one sheet.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_row = max(1, int(math.sqrt(per_sheet)))
    cells: dict = {}  # index label -> (sheet, x, y, w, h)
    sheet, sheet_no, cell, failed = None, 0, 0, 0

    def flush():
        nonlocal sheet, sheet_no, cell
        if sheet is not None and cell:
            rows_used = math.ceil(cell / per_row)
            with atomic.atomic_path(out_dir / f"sheet-{sheet_no:04d}.jpg") as tmp:
                sheet.crop((0, 0, sheet.width, rows_used * size)).save(
                    tmp, format="JPEG", quality=quality
                )
            sheet_no += 1
        sheet, cell = None, 0

    for label, crop in iter_crops(frame, open_image, size, workers):
        if isinstance(crop, BaseException):
            failed += 1
            continue
        if sheet is None:
            rows = math.ceil(per_sheet / per_row)
            sheet = Image.new("RGB", (per_row * size, rows * size), (235, 235, 235))
        x, y = (cell % per_row) * size, (cell // per_row) * size
        sheet.paste(crop, (x, y))
        cells[label] = (f"sheet-{sheet_no:04d}.jpg", x, y, crop.width, crop.height)
        cell += 1
        if cell == per_sheet:
            flush()
    flush()
    if failed:
        log.warning(
            "%d of %d thumbnails could not be cut (their originals could not be opened)",
            failed,
            len(frame),
        )
    log.info("%d thumbnails in %d sprite sheets", len(frame) - failed, sheet_no)
    placed = pd.DataFrame.from_dict(
        cells, orient="index", columns=["sheet", "sprite_x", "sprite_y", "thumb_w", "thumb_h"]
    )
    placed = placed.reindex(frame.index)
    for column in ("sprite_x", "sprite_y", "thumb_w", "thumb_h"):
        placed[column] = placed[column].fillna(0).astype(np.int64)
    return placed


_TOOLTIP = """
<div style="max-width:300px;font-size:12px;overflow-wrap:anywhere">
  <div style="width:@thumb_w{0}px;height:@thumb_h{0}px;background-image:url('@sprite_url');background-position:@sprite_pos;border:1px solid #888"></div>
  <div><b>@class_name</b> &middot; @flag &middot; confidence @confidence{0.00}</div>
  <div>anomaly score global @score_global{0.000}, class @score_class{0.000}, code @outlier_code</div>
  <div>top concept: @top_concept</div>
  <div style="white-space:normal">caption: @caption</div>
  <div style="white-space:normal;color:#555">@image_path</div>
</div>
"""

# Builds the details panel from the clicked point; every value is escaped.
_DETAILS_JS = """
const i = source.selected.indices[0];
if (i === undefined) { details.text = hint; return; }
const d = source.data;
const esc = (v) => String(v === null || v === undefined || (typeof v === 'number' && isNaN(v)) ? '' : v)
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const num = (v, k) => (v === null || isNaN(v)) ? '' : Number(v).toFixed(k);
const cell = `width:${d.thumb_w[i] * 2}px;height:${d.thumb_h[i] * 2}px;` +
    `background-image:url('${esc(d.sprite_url[i])}');` +
    `background-position:${-2 * d.sprite_x[i]}px ${-2 * d.sprite_y[i]}px;` +
    `background-size:${2 * sheet_px}px auto;border:1px solid #888`;
details.text = `<div class="explorer-details" data-object-id="${esc(d.object_id[i])}">` +
    (d.sprite_url[i] ? `<div class="explorer-crop" style="${cell}"></div>` : '<div>(no crop)</div>') +
    `<p><b>${esc(d.class_name[i])}</b> (${esc(d.flag[i])}), confidence ${num(d.confidence[i], 3)}</p>` +
    `<p>anomaly score (higher = more anomalous) global ${num(d.score_global[i], 3)}, class ${num(d.score_class[i], 3)}, outlier code ${esc(d.outlier_code[i])}</p>` +
    `<p>top concept: ${esc(d.top_concept[i])}</p>` +
    `<p>targets: ${esc(d.target_matches[i])}</p>` +
    `<p class="explorer-caption">caption: ${esc(d.caption[i])}</p>` +
    `<p>image: ${esc(d.image_path[i])}</p><p>object: ${esc(d.object_id[i])}</p></div>`;
"""

_FILTER_JS = """
const classes = new Set(class_choice.value);
const flags = new Set(flag_choice.active.map((k) => flag_choice.labels[k]));
const d = source.data;
const n = d.class_name.length;
const keep = new Array(n);
let shown = 0;
for (let i = 0; i < n; i++) {
    keep[i] = classes.has(d.class_name[i]) && flags.has(d.flag[i]);
    if (keep[i]) shown++;
}
view.filter = new filter.constructor({booleans: keep});
counter.text = `${shown} of ${n} points shown`;
"""

_COLOUR_JS = """
const field = fields[colour_choice.value];
renderer.glyph.fill_color = {field: field, transform: mappers[field]};
renderer.glyph.line_color = {field: field, transform: mappers[field]};
legend.items[0].label = {field: field};
"""


def _palette(n: int) -> list[str]:
    from bokeh.palettes import Category10, Category20, Turbo256

    if n <= 10:
        return list(Category10[10][: max(n, 3)])[: max(n, 1)]
    if n <= 20:
        return list(Category20[20][:n])
    return [Turbo256[int(i)] for i in np.linspace(0, 255, n)]


def write_explorer(
    frame: pd.DataFrame,
    sprites: pd.DataFrame,
    out_html: str | os.PathLike,
    sprite_folder: str,
    total_objects: int,
    sheet_px: int,
) -> int:
    """Write the explorer page; returns the number of points. ``sprite_folder`` is
    the sheets' folder relative to the page; ``sheet_px`` a sheet's width."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import (
        BooleanFilter,
        CategoricalColorMapper,
        CDSView,
        CheckboxGroup,
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        Legend,
        LegendItem,
        MultiChoice,
        Select,
        TapTool,
    )
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    data = frame.copy()
    data["top_concept"] = data["top_concept"].fillna(NO_CONCEPT).astype(str)
    for name in ("caption", "image_path", "target_matches"):
        data[name] = data[name].fillna("").astype(str)
    for name in ("confidence", "score_global", "score_class", "x", "y"):
        data[name] = data[name].astype(np.float64)
    data["outlier_code"] = data["outlier_code"].fillna(0).astype(np.int64)
    data = data.join(sprites)
    has_sprite = data["sheet"].notna()
    data["sprite_url"] = np.where(
        has_sprite, sprite_folder.rstrip("/") + "/" + data["sheet"].fillna(""), ""
    )
    data["sprite_pos"] = [f"-{x}px -{y}px" for x, y in zip(data["sprite_x"], data["sprite_y"])]
    data["size"] = np.where(data["flag"].isin(FLAGS[:2]), 10.0, 6.0)  # outliers stand out
    columns = [
        "x",
        "y",
        "object_id",
        "class_name",
        "flag",
        "top_concept",
        "confidence",
        "score_global",
        "score_class",
        "outlier_code",
        "caption",
        "image_path",
        "target_matches",
        "sprite_url",
        "sprite_pos",
        "sprite_x",
        "sprite_y",
        "thumb_w",
        "thumb_h",
        "size",
    ]
    source = ColumnDataSource({c: data[c].to_numpy() for c in columns}, name="points_source")

    mappers = {}
    for field in COLOUR_BY.values():
        factors = sorted(data[field].unique().tolist(), key=str)
        if field == "flag":
            factors = [f for f in FLAGS if f in set(factors)]
        mappers[field] = CategoricalColorMapper(factors=factors, palette=_palette(len(factors)))
    method = "UMAP" if len(frame) and frame["method"].iloc[0] == "umap" else "t-SNE"
    plot = figure(
        title=f"{method} map: {len(frame):,} of {total_objects:,} objects",
        output_backend="webgl",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        active_scroll="wheel_zoom",
        sizing_mode="stretch_both",
        min_width=600,
        min_height=500,
        name="map",
    )
    view = CDSView(filter=BooleanFilter(booleans=[True] * len(data)))
    colour = {"field": "class_name", "transform": mappers["class_name"]}
    points = plot.scatter(
        "x",
        "y",
        source=source,
        view=view,
        size="size",
        fill_color=colour,
        line_color=colour,
        fill_alpha=0.7,
        name="points",
    )
    outliers_src = np.flatnonzero(data["flag"].isin(FLAGS[:2]).to_numpy())
    # at most three tooltips at once: in a dense region a hover hits hundreds of points
    plot.add_tools(HoverTool(renderers=[points], tooltips=_TOOLTIP, limit=3))
    plot.add_tools(TapTool(renderers=[points]))
    legend = Legend(
        items=[LegendItem(label={"field": "class_name"}, renderers=[points])], location="top_right"
    )
    plot.add_layout(legend, "right")
    plot.xaxis.visible = plot.yaxis.visible = False

    hint = "<i>Click a point to see its crop, caption and scores.</i>"
    details = Div(text=hint, width=320, name="details", styles={"overflow-wrap": "anywhere"})
    counter = Div(text=f"{len(data)} of {len(data)} points shown", name="counter")
    colour_choice = Select(
        title="Colour by", value="class", options=list(COLOUR_BY), name="colour_by"
    )
    classes = sorted(data["class_name"].unique().tolist())
    class_choice = MultiChoice(title="Classes", value=classes, options=classes, name="class_filter")
    flag_choice = CheckboxGroup(
        labels=list(FLAGS), active=list(range(len(FLAGS))), name="flag_filter"
    )

    colour_choice.js_on_change(
        "value",
        CustomJS(
            args=dict(
                renderer=points,
                legend=legend,
                mappers=mappers,
                fields=COLOUR_BY,
                colour_choice=colour_choice,
            ),
            code=_COLOUR_JS,
        ),
    )
    refilter = CustomJS(
        args=dict(
            source=source,
            view=view,
            filter=view.filter,
            class_choice=class_choice,
            flag_choice=flag_choice,
            counter=counter,
        ),
        code=_FILTER_JS,
    )
    class_choice.js_on_change("value", refilter)
    flag_choice.js_on_change("active", refilter)
    source.selected.js_on_change(
        "indices",
        CustomJS(
            args=dict(source=source, details=details, hint=hint, sheet_px=sheet_px),
            code=_DETAILS_JS,
        ),
    )
    about = Div(
        text=(
            f"<b>Rare-object explorer</b><br>{len(outliers_src):,} outliers and final outliers shown; "
            "hover a point for its crop, click it for details."
        )
    )
    controls = column(
        about,
        colour_choice,
        Div(text="<b>Flags</b>"),
        flag_choice,
        class_choice,
        counter,
        details,
        width=340,
    )
    layout = row(plot, controls, sizing_mode="stretch_both")
    page = file_html(layout, resources=INLINE, title="Rare-object explorer")
    atomic.write_text(out_html, page)
    return len(data)


def build_explorer(
    projection: pd.DataFrame,
    detection_paths,
    outlier_paths,
    captions: pd.DataFrame | None,
    concepts: pd.DataFrame | None,
    targets: dict,
    out_html: str | os.PathLike,
    sprite_dir: str | os.PathLike,
    open_image,
    total_objects: int,
    thumbnail_size: int = 64,
    per_sheet: int = 1024,
    workers: int = 2,
) -> int:
    """The whole explorer: assemble the points, write the sprite sheets, then the page."""
    frame = explorer_frame(projection, detection_paths, outlier_paths, captions, concepts, targets)
    sprites = write_sprites(frame, sprite_dir, open_image, thumbnail_size, per_sheet, workers)
    relative = os.path.relpath(sprite_dir, Path(out_html).parent)
    per_row = max(1, int(math.sqrt(per_sheet)))
    return write_explorer(
        frame, sprites, out_html, relative, total_objects, per_row * thumbnail_size
    )
