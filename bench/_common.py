"""Helpers shared by the benches: synthetic embeddings, peak memory, timing.

Not imported by the tests. Each bench measures its heavy parts in child
processes (:func:`run_isolated`) so that every peak-RSS figure is that part's
own, not the maximum of everything the bench did before it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

GIB = 1024**3


def _kinds(rng, dim: int, n_clusters: int, latent_dim: int):
    """The model of the synthetic rows: ``(mean, centres, bases, weights)``, a shared mean
    direction, each object kind's centre and low-rank spread, and Zipf-like kind sizes."""
    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= 1.0 / np.linalg.norm(mean)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((n_clusters, latent_dim, dim)).astype(np.float32) / np.sqrt(
        dim * latent_dim
    )
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    weights /= weights.sum()
    return mean, centres, bases, weights


def _draw_rows(rng, cluster: np.ndarray, mean, centres, bases) -> np.ndarray:
    """Unnormalised rows for ``cluster`` (one kind per row, -1: a planted outlier)."""
    dim, latent_dim = mean.shape[0], bases.shape[1]
    block = np.empty((cluster.size, dim), dtype=np.float32)
    for j in np.unique(cluster):
        rows = np.flatnonzero(cluster == j)
        if j < 0:
            block[rows] = rng.standard_normal((rows.size, dim), dtype=np.float32) * 0.08
            block[rows] += 0.6 * mean
            continue
        z = rng.standard_normal((rows.size, latent_dim), dtype=np.float32)
        block[rows] = 0.8 * mean + 0.6 * centres[j] + 0.45 * (z @ bases[j])
        block[rows] += rng.standard_normal((rows.size, dim), dtype=np.float32) * 0.005
    return block


def synthetic_embeddings(
    n: int,
    dim: int = 512,
    n_clusters: int = 200,
    latent_dim: int = 24,
    outlier_fraction: float = 0.002,
    duplicate_fraction: float = 0.0,
    seed: int = 0,
    chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered, L2-normalised float32 embeddings with planted outliers.

    Shaped like image embeddings of object crops: a shared mean direction
    (all crops look alike to CLIP, cosine ~0.5), ``n_clusters`` object kinds
    with Zipf-like sizes, each a low-rank (``latent_dim``) spread around its
    centre plus small isotropic noise. Planted outliers are points in random
    directions. ``duplicate_fraction`` of the inliers are replaced by
    near-copies of other points (cosine > 0.99), like one object seen in
    successive frames.

    Returns ``(X, cluster, planted)``: the matrix, each row's cluster (-1 for
    the planted outliers) and the planted-outlier mask.
    """
    rng = np.random.default_rng(seed)
    mean, centres, bases, weights = _kinds(rng, dim, n_clusters, latent_dim)
    cluster = rng.choice(n_clusters, size=n, p=weights).astype(np.int32)
    planted = rng.random(n) < outlier_fraction
    cluster[planted] = -1
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        c = cluster[start:stop]
        block = _draw_rows(rng, c, mean, centres, bases)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[start:stop] = block
    if duplicate_fraction > 0:
        n_dup = int(n * duplicate_fraction)
        target = rng.choice(np.flatnonzero(~planted), size=n_dup, replace=False)
        source = rng.integers(0, n, size=n_dup)
        for start in range(0, n_dup, chunk):
            t = target[start : start + chunk]
            block = (
                X[source[start : start + chunk]]
                + rng.standard_normal((t.size, dim), dtype=np.float32) * 0.002
            )
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            X[t] = block
            cluster[t] = cluster[source[start : start + chunk]]
        planted[target] = planted[source]
    return X, cluster, planted


def iter_synthetic_embeddings(
    n: int,
    dim: int = 512,
    n_clusters: int = 2000,
    latent_dim: int = 24,
    outlier_fraction: float = 0.002,
    duplicate_fraction: float = 0.02,
    seed: int = 0,
    chunk: int = 200_000,
):
    """:func:`synthetic_embeddings` one ``chunk`` of rows at a time, for sizes whose whole
    matrix does not fit (10,000,000 x 512 float32 is 20 GB): yields ``(X, cluster,
    planted)`` per chunk. The same model of the rows (shared mean direction, Zipf-sized
    low-rank object kinds, planted outliers in random directions); the near-copies
    (``duplicate_fraction``) copy an earlier row of the same chunk, like one object seen
    in successive frames. Memory: one chunk.
    """
    rng = np.random.default_rng(seed)
    mean, centres, bases, weights = _kinds(rng, dim, n_clusters, latent_dim)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cluster = rng.choice(n_clusters, size=m, p=weights).astype(np.int32)
        planted = rng.random(m) < outlier_fraction
        cluster[planted] = -1
        X = _draw_rows(rng, cluster, mean, centres, bases)
        n_dup = int(m * duplicate_fraction)
        if n_dup and m > 1:
            target = rng.choice(
                np.flatnonzero(~planted[1:]) + 1, size=min(n_dup, m - 1), replace=False
            )
            source = (target * rng.random(target.size)).astype(np.int64)  # an earlier row
            X[target] = (
                X[source] + rng.standard_normal((target.size, dim), dtype=np.float32) * 0.002
            )
            cluster[target] = cluster[source]
            planted[target] = planted[source]
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        yield X, cluster, planted


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's own memory so far.

    ``VmHWM`` of /proc/self/status where there is one (Linux): the high-water mark of this
    process's address space. Not ``getrusage``'s ``ru_maxrss``: Linux carries that one over
    ``exec`` from the forked copy of the parent, so a child started by
    :func:`run_isolated` from a parent holding gigabytes reported the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _child(queue, func, args, kwargs):
    try:
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        seconds = time.perf_counter() - t0
        queue.put(("ok", result, seconds, peak_rss_bytes()))
    except BaseException as error:  # report, don't hang the parent
        import traceback

        queue.put(("error", traceback.format_exc(), 0.0, peak_rss_bytes()))
        raise SystemExit(1) from error


def run_isolated(func, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` in a fresh process.

    Returns ``(result, seconds, peak_rss_bytes)`` of that process: the time of
    the call alone, the peak memory of the whole child (interpreter, imports,
    any data it loaded, the call). ``func`` must be a module-level function.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, func, args, kwargs))
    proc.start()
    status, result, seconds, peak = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"child failed:\n{result}")
    return result, seconds, peak


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    model = "?"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cores} cores ({model}), {mem:.0f} GiB RAM, CPU only"


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def run_snakemake(workdir: Path, config: Path, *args: str) -> str:
    """Run the repository's workflow in ``workdir`` with ``config`` on 2 cores; its stdout.

    A failed run ends the bench with the end of snakemake's output.
    """
    import subprocess

    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    return result.stdout
