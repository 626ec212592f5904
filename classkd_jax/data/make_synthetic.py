"""Writes the built-in synthetic task as a data directory (MiniLLM layout).

    python -m classkd_jax.data.make_synthetic --out data [--seed 0]

writes data/synthetic/{raw,valid}.jsonl, meta.json and dolly_{train,dev,test}.jsonl
(see `synthetic.write_synthetic_data_dir`); then evaluate with the benchmark
name 'synthetic' and the same template the model was trained with.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from classkd_jax.data import synthetic, templates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=synthetic.write_synthetic_data_dir.__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="data_dir; files go to OUT/synthetic/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--template", default=synthetic.DEFAULT_TEMPLATE, choices=sorted(templates.TEMPLATES)
    )
    for split, n in synthetic.DEFAULT_SIZES.items():
        parser.add_argument(f"--num_{split}", type=int, default=n)
    args = parser.parse_args(argv)
    path = synthetic.write_synthetic_data_dir(
        args.out,
        args.seed,
        template=args.template,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
