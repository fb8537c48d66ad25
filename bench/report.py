"""Bench: the report's gallery writer and the explorer writer at 1,000,000 objects, against the export.

    .venv/bin/python bench/report.py                  # 1,000,000 objects, 100,000 on the map
    .venv/bin/python bench/report.py --n 100000       # quick

The data are bench/export.py's synthetic gathered tables (detection shards of
240 images with about 30 objects each, 5 % outliers, half of the classes
matching a target, 2,000 captioned objects), with one change: every image path
is a distinct file, a symbolic link to one of a few real 1600x900 JPEGs, so
that cutting crops decodes one real original per distinct image as a run would
(the page cache keeps the few real files warm; a run reads each original from
disk). Each part runs in its own child process, so each peak-RSS figure is
that part alone:

1. the baseline: the streaming export (bench/export.py's ``export_shards``
   pass, what every run already pays for these objects);
2. the galleries' choice done naively, every table in memory at once (all
   detection shards concatenated and merged with the outlier table), for the
   memory of the streaming choice;
3. ``report_galleries``' work: the streaming choice (:func:`gallery.choose_items`)
   and the crops (:func:`gallery.write_galleries`), 24 per group;
4. ``explorer``'s work: :func:`explorer.build_explorer` on a map of
   ``--points`` objects chosen by :func:`projection.choose_shown` (coordinates
   random: the projection itself is timed separately, ``--projection``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, machine, run_isolated  # noqa: E402
from export import TARGETS, _generate, _inputs  # noqa: E402
from export import _streaming as _export  # noqa: E402  (the export bench's streaming pass)

REAL_IMAGES = 24


def _prepare(root: str, n: int, seed: int) -> tuple[int, int, int]:
    """bench/export.py's data, each image path a link to one of a few real JPEGs."""
    import pandas as pd
    import pyarrow as pa
    from PIL import Image

    from rare_objects.io import schemas

    root = Path(root)
    n, shards = _generate(str(root), n, seed)
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(
        REAL_IMAGES
    ):  # smooth scenes with texture, about the size of a nuScenes camera JPEG
        y, x = np.mgrid[0:900, 0:1600]
        base = (np.sin(x / (40 + 7 * i)) + np.cos(y / (30 + 5 * i))) * 60 + 128
        pixels = np.clip(base[..., None] + rng.normal(0, 18, (900, 1600, 3)), 0, 255).astype(
            np.uint8
        )
        path = root / "real" / f"scene{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        pool.append(path)
    detections, _ = _inputs(root)
    n_images = 0
    for path in detections:
        frame = pd.read_parquet(path)
        unique = frame["image_id"].unique()
        links = {image_id: root / "images" / f"{image_id}.jpg" for image_id in unique}
        for k, (_image_id, link) in enumerate(links.items()):
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(pool[(n_images + k) % len(pool)], link)
        n_images += len(unique)
        frame["image_path"] = frame["image_id"].map(lambda i, links=links: str(links[i]))
        frame[["x2", "y2"]] = frame[["x2", "y2"]].clip(upper=[1600, 900])
        schemas.write_table(
            pa.Table.from_pandas(frame, preserve_index=False), schemas.DETECTIONS, path
        )
    return n, shards, n_images


def _naive_choice(root: str, per_group: int) -> int:
    import pandas as pd

    from rare_objects.report.projection import anomaly_score

    detections, paths = _inputs(Path(root))
    frame = pd.concat([pd.read_parquet(p) for p in detections], ignore_index=True).merge(
        pd.read_parquet(paths["outliers"]).drop(columns="class_name"), on="object_id"
    )
    frame["score"] = anomaly_score(frame["score_global"], frame["score_class"])
    concepts = pd.read_parquet(paths["concepts"])
    frame = frame.merge(
        concepts[["object_id", "top_concept", "is_final_outlier"]], on="object_id", how="left"
    )
    parts = [
        frame[frame["is_outlier"]].assign(gallery="o", group=lambda f: f["class_name"]),
        frame[frame["is_final_outlier"].fillna(False).astype(bool)].assign(
            gallery="f", group=lambda f: f["top_concept"]
        ),
    ]
    for target, near in TARGETS.items():
        parts.append(
            frame[frame["class_name"].isin([target, *near])].assign(gallery="t", group=target)
        )
    chosen = (
        pd.concat(parts)
        .sort_values(["gallery", "group", "score"], ascending=[True, True, False])
        .groupby(["gallery", "group"])
        .head(per_group)
    )
    return len(chosen)


def _galleries(root: str, out: str, per_group: int) -> int:
    import pandas as pd

    from rare_objects.io import images
    from rare_objects.report import gallery

    detections, paths = _inputs(Path(root))
    concepts = pd.read_parquet(paths["concepts"])
    captions = pd.read_parquet(paths["captions"])
    items = gallery.choose_items(paths["outliers"], concepts, TARGETS, per_group)
    out = Path(out)
    index = gallery.write_galleries(
        items,
        detections,
        captions,
        concepts,
        {name: out / name for name in gallery.GALLERIES},
        out / "galleries.json",
        images.open_rgb,
        crop_size=256,
        workers=2,
    )
    return len(index)


def _explorer(root: str, out: str, points: int, seed: int) -> tuple[int, int, int]:
    import pandas as pd

    from rare_objects.io import images
    from rare_objects.report import explorer, projection
    from rare_objects.stages.targets import target_matches

    detections, paths = _inputs(Path(root))
    outliers = pd.read_parquet(paths["outliers"])
    concepts = pd.read_parquet(paths["concepts"])
    final = (
        outliers["object_id"]
        .isin(concepts.loc[concepts["is_final_outlier"], "object_id"])
        .to_numpy()
    )
    reasons = projection.shown_reasons(
        final, outliers["is_outlier"], target_matches(outliers["class_name"], TARGETS).map(bool)
    )
    rows = projection.choose_shown(
        reasons,
        projection.anomaly_score(outliers["score_global"], outliers["score_class"]),
        points,
        seed,
    )
    rng = np.random.default_rng(seed)
    shown = outliers.iloc[rows][["object_id", "class_name", "is_outlier"]].assign(
        shown_reason=reasons[rows],
        method="umap",
        x=rng.normal(size=len(rows)).astype(np.float32),
        y=rng.normal(size=len(rows)).astype(np.float32),
    )
    del outliers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = explorer.build_explorer(
        shown,
        detections,
        paths["outliers"],
        pd.read_parquet(paths["captions"]),
        concepts,
        TARGETS,
        out / "explorer.html",
        out / "explorer_files",
        images.open_rgb,
        total_objects=len(reasons),
        thumbnail_size=64,
        per_sheet=1024,
        workers=2,
    )
    sheets = len(list((out / "explorer_files").iterdir()))
    return n, sheets, int(shown["image_id"].nunique()) if "image_id" in shown else 0


def _projection(n: int, method: str, seed: int) -> None:
    from _common import synthetic_embeddings

    from rare_objects.report.projection import coordinates

    X, _, _ = synthetic_embeddings(n, seed=seed)
    settings = {"perplexity": 30, "umap_n_neighbors": 15, "umap_min_dist": 0.1}
    coordinates(X, method, settings, seed, threads=2)


def _size(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument(
        "--points",
        type=int,
        default=100_000,
        help="points on the explorer's map (projection.max_points)",
    )
    parser.add_argument("--per-group", type=int, default=24, help="report.max_per_group")
    parser.add_argument(
        "--projection", type=int, default=0, help="also time t-SNE and UMAP on this many embeddings"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (n, shards, n_images), seconds, _ = run_isolated(
            _prepare, str(tmp / "in"), args.n, args.seed
        )
        print(
            f"data: {n:,} objects on {n_images:,} images in {shards} detection shards (each image a link to one "
            f"of {REAL_IMAGES} real 1600x900 JPEGs), 5% outliers (prepared in {seconds:.0f} s)"
        )
        _, base_s, base_rss = run_isolated(_export, str(tmp / "in"), str(tmp / "export"))
        print(
            f"baseline export_shards (streaming export): {base_s:.1f} s, peak RSS {base_rss / GIB:.2f} GiB"
        )
        chosen, naive_s, naive_rss = run_isolated(_naive_choice, str(tmp / "in"), args.per_group)
        print(
            f"naive gallery choice (all tables in memory): {naive_s:.1f} s, peak RSS {naive_rss / GIB:.2f} GiB, "
            f"{chosen} items"
        )
        crops, gal_s, gal_rss = run_isolated(
            _galleries, str(tmp / "in"), str(tmp / "report"), args.per_group
        )
        print(
            f"report galleries (streaming choice + crops): {gal_s:.1f} s, peak RSS {gal_rss / GIB:.2f} GiB, "
            f"{crops} crops, {_size(tmp / 'report') / 2**20:.1f} MiB"
        )
        (points, sheets, _), exp_s, exp_rss = run_isolated(
            _explorer, str(tmp / "in"), str(tmp / "explorer"), args.points, args.seed
        )
        html_mib = _size(tmp / "explorer" / "explorer.html") / 2**20
        sprites_mib = _size(tmp / "explorer" / "explorer_files") / 2**20
        print(
            f"explorer ({points:,} points): {exp_s:.1f} s, peak RSS {exp_rss / GIB:.2f} GiB; explorer.html "
            f"{html_mib:.1f} MiB, {sheets} sprite sheets {sprites_mib:.1f} MiB"
        )
        print(
            f"ratio to the export: galleries time {gal_s / base_s:.2f}, peak RSS {gal_rss / base_rss:.2f}; "
            f"explorer time {exp_s / base_s:.2f}, peak RSS {exp_rss / base_rss:.2f}"
        )
        print(f"ratio streaming / naive gallery choice: peak RSS {gal_rss / naive_rss:.2f}")
    if args.projection:
        for method in ("umap", "tsne"):
            _, s, rss = run_isolated(_projection, args.projection, method, args.seed)
            print(
                f"projection {method} of {args.projection:,} x 512 embeddings: {s:.1f} s, peak RSS {rss / GIB:.2f} GiB"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
