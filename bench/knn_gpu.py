"""The neighbour search on a GPU with torch (``outliers.device: cuda``) against the CPU path.

Synthetic clustered embeddings with near-duplicates (``_common.synthetic_embeddings``).
Runs, each in its own process (time of the search, peak memory of the process):

- the CPU path of the workflow: the approximate faiss search (``approximate_knn`` on the
  CPU), the baseline;
- the exact blocked brute force with torch (``torch_knn``) on ``--device``: on a GPU
  (half-precision products, float32 re-ranking), or on the CPU where none is lent, which
  shows its exactness but not its speed.

Printed: seconds and peak memory of each, the ratio to the baseline, and the recall of
the approximate search against the exact neighbours (both searches return k per row).

    python bench/knn_gpu.py [--rows 50000] [--dim 512] [--k 20] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from _common import machine, run_isolated, synthetic_embeddings  # noqa: E402


def _data(rows: int, dim: int, seed: int) -> np.ndarray:
    X, _, _ = synthetic_embeddings(rows, dim=dim, duplicate_fraction=0.2, seed=seed)
    return X


def cpu_path(rows: int, dim: int, k: int, seed: int) -> np.ndarray:
    from rare_objects.neighbors.search import AnnParams, approximate_knn

    _, ind = approximate_knn(_data(rows, dim, seed), k, AnnParams(seed=seed))
    return ind


def torch_path(rows: int, dim: int, k: int, seed: int, device: str) -> np.ndarray:
    import torch

    from rare_objects.neighbors.search import torch_knn

    _, ind = torch_knn(_data(rows, dim, seed), k, device)
    on_gpu = device.startswith("cuda")
    return ind, torch.cuda.max_memory_allocated(device) if on_gpu else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine())
    print(f"{args.rows} x {args.dim}, k = {args.k}, torch on {args.device}")
    base, base_s, base_peak = run_isolated(cpu_path, args.rows, args.dim, args.k, args.seed)
    print(f"CPU path (faiss, approximate): {base_s:8.1f} s, peak {base_peak / 2**30:.2f} GiB")
    (exact, gpu_peak), exact_s, exact_peak = run_isolated(
        torch_path, args.rows, args.dim, args.k, args.seed, args.device
    )
    recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(base, exact)])
    print(
        f"torch brute force on {args.device} (exact): {exact_s:8.1f} s, peak "
        f"{exact_peak / 2**30:.2f} GiB (GPU {gpu_peak / 2**30:.2f} GiB), "
        f"{exact_s / base_s:.2f}x the CPU path"
    )
    print(f"recall of the CPU path against the exact neighbours: {recall:.4f}")


if __name__ == "__main__":
    main()
