"""The evaluation in the report: evaluation.json as tables and one figure.

The figure has three panels: per rare category, its recall at each stage (detected,
flagged, captioned, final outlier); per detector entry, AUROC and average precision
of its ranking of the rare objects beside a random ranking; per rare category, the
training selection's share of the samples holding it beside a random selection of
the same size (the 5th-95th percentile of random draws as a bar).
"""

from __future__ import annotations

import os

import pandas as pd

STAGES = ["detected", "outlier", "selected", "captioned", "final_outlier"]


def frames(report: dict) -> list[tuple[str, pd.DataFrame]]:
    """evaluation.json as titled tables."""
    categories = pd.DataFrame.from_dict(report["categories"], orient="index")
    categories.index.name = "category"
    categories.insert(0, "rare", categories.index.isin(report["rare_categories"]))
    rows = []
    for name, entry in report["detectors"].items():
        for scope in ("global", "class", "global_or_class"):
            measures = entry[scope]
            rows.append(
                {
                    "detectors": name,
                    "ranking": scope,
                    "AUROC": measures["auroc"],
                    "average precision": measures["average_precision"],
                    **{f"recall@{k}": v for k, v in measures["recall_at_k"].items()},
                }
            )
    random = report["random_ranking"]
    rows.append(
        {
            "detectors": "random",
            "ranking": "",
            "AUROC": random["auroc"],
            "average precision": random["average_precision"],
            **{f"recall@{k}": v for k, v in random["recall_at_k"].items()},
        }
    )
    sections = [
        ("Rare objects by outlier detector (higher is better)", pd.DataFrame(rows)),
        ("Ground-truth categories through the stages", categories.reset_index()),
        (
            "Mining ceiling: rare objects the detector missed",
            pd.DataFrame.from_dict(report["mining_ceiling"], orient="index")
            .rename_axis("category")
            .reset_index(),
        ),
    ]
    selection = report.get("training_selection")
    if selection:
        table = pd.DataFrame.from_dict(selection["categories"], orient="index")
        sections.append(
            (
                f"Training selection ({selection['selected_samples']} of "
                f"{selection['pool_samples']} samples) against random",
                table.rename_axis("category").reset_index(),
            )
        )
    return sections


def _legend_below(ax) -> None:
    """The legend under the axes, where it hides no bar."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3, frameon=False)


def plot(report: dict, path: str | os.PathLike) -> None:
    """The three panels (module doc) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rare = [c for c in report["rare_categories"] if c in report["categories"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 6))
    ax = axes[0]
    width = 0.8 / len(STAGES)
    for i, stage in enumerate(STAGES):
        shares = [
            report["categories"][c][stage] / max(1, report["categories"][c]["objects"])
            for c in rare
        ]
        ax.bar([x + i * width for x in range(len(rare))], shares, width, label=stage)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rare))], rare, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Rare ground-truth objects at each stage")
    ax.set_ylabel("share of the category's objects")
    _legend_below(ax)

    ax = axes[1]
    names = list(report["detectors"])
    aurocs = [report["detectors"][n]["global_or_class"]["auroc"] or 0 for n in names]
    aps = [report["detectors"][n]["global_or_class"]["average_precision"] or 0 for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], aurocs, 0.4, label="AUROC")
    ax.bar([x + 0.2 for x in xs], aps, 0.4, label="average precision")
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="random AUROC")
    random_ap = report["random_ranking"]["average_precision"] or 0
    ax.axhline(random_ap, color="black", ls=":", lw=1, label="random AP")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Ranking of the rare objects (global or class)")
    _legend_below(ax)

    ax = axes[2]
    selection = report.get("training_selection")
    if selection:
        cats = [c for c, v in selection["categories"].items() if v.get("share") is not None]
        shares = [selection["categories"][c]["share"] for c in cats]
        low = [selection["categories"][c]["random_p05"] for c in cats]
        high = [selection["categories"][c]["random_p95"] for c in cats]
        expected = [selection["categories"][c]["random_expected_share"] for c in cats]
        xs = range(len(cats))
        ax.bar([x - 0.2 for x in xs], shares, 0.4, label="selection")
        ax.bar(
            [x + 0.2 for x in xs],
            expected,
            0.4,
            yerr=[
                [e - lo for e, lo in zip(expected, low)],
                [h - e for e, h in zip(expected, high)],
            ],
            capsize=3,
            color="lightgrey",
            label="random (5th-95th percentile)",
        )
        ax.set_xticks(list(xs), cats, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        _legend_below(ax)
    ax.set_title("Samples holding the category in the training selection")
    fig.tight_layout()
    from rare_objects.io import atomic

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
