"""How fast are the mask corruptions? Masks per second per CPU core on a 3d_fullres-sized patch.

    python benchmarks/corruption_speed.py [--shape 128 128 128] [--labels 3] [--n 60]
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from common import print_table, write_json
from nnunet_qg.quality.corruptions import ALL_FAMILIES, MaskCorruptor, apply_family


def phantom_label_map(shape, num_labels: int, rng) -> np.ndarray:
    """Touching ellipsoids, one per label, filling about a third of the patch."""
    grid = np.indices(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.int16)
    center = np.array(shape) / 2
    for label in range(1, num_labels + 1):
        c = center + rng.uniform(-0.15, 0.15, len(shape)) * np.array(shape)
        r = rng.uniform(0.12, 0.22, len(shape)) * np.array(shape)
        mask[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1] = label
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[128, 128, 128])
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--n", type=int, default=60, help="masks drawn from the mixture")
    parser.add_argument("--out", default="benchmark_results/corruption_speed.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = list(range(1, args.labels + 1))
    mask = phantom_label_map(tuple(args.shape), args.labels, rng)
    rows = []
    with threadpool_limits(1):  # one core
        for name in ALL_FAMILIES:
            started = time.perf_counter()
            apply_family(name, mask, np.random.default_rng(1), False, labels)
            rows.append({"family": name, "ms": 1000 * (time.perf_counter() - started)})
        corruptor = MaskCorruptor(labels)
        others = [phantom_label_map(tuple(args.shape), args.labels, rng) for _ in range(3)]
        started = time.perf_counter()
        for _ in range(args.n):
            corruptor.corrupt(mask, rng, others)
        mixture_s = (time.perf_counter() - started) / args.n
    rows.sort(key=lambda r: -r["ms"])
    print(f"Corruption cost on a {'x'.join(map(str, args.shape))} patch with {args.labels} labels, one CPU core")
    print_table(rows, ["family", "ms"])
    print(f"\nmixture (paper's category probabilities): {1 / mixture_s:.2f} masks/s per core "
          f"({1000 * mixture_s:.1f} ms per mask, {args.n} masks)")
    write_json({"shape": args.shape, "labels": args.labels, "per_family_ms": rows,
                "mixture_masks_per_second_per_core": 1 / mixture_s}, args.out)


if __name__ == "__main__":
    main()
