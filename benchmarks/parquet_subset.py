"""A smaller copy of a Parquet dataset folder, same layout: the first N training rows and M test rows
(CIFAR-10's shards are shuffled, so the first rows are a random sample of every class). For carrying
data to a machine with a size cap, e.g. benchmarks/gpu_evidence.sh's.

    python -m benchmarks.parquet_subset SRC DST --train 5000 --test 2000
"""
import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def subset(src: Path, dst: Path, split: str, rows: int) -> int:
    shards = sorted(src.glob(f"{split}-*.parquet"))
    if not shards:
        raise SystemExit(f"parquet_subset: no {split}-*.parquet in {src}")
    tables, left = [], rows
    for shard in shards:
        if left <= 0:
            break
        table = pq.read_table(shard)
        tables.append(table.slice(0, left))
        left -= tables[-1].num_rows
    table = pa.concat_tables(tables).replace_schema_metadata(pq.read_schema(shards[0]).metadata)
    pq.write_table(table, dst / f"{split}-00000-of-00001.parquet")  # metadata kept: class names travel
    return table.num_rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    args = p.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    counts = {split: subset(args.src, args.dst, split, n) for split, n in (("train", args.train), ("test", args.test))}
    size = sum(f.stat().st_size for f in args.dst.glob("*.parquet")) / 2 ** 20
    print(f"parquet_subset: {counts['train']} train, {counts['test']} test rows in {args.dst} ({size:.1f} MiB)")
    sys.exit(0)
