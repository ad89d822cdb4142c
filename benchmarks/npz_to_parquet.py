"""Write MNIST from a compact .npz (uint8 train_x/test_x [n, 1, 28, 28], train_y/test_y) as
Parquet shards in the datasets' layout: for carrying MNIST to a machine under a size cap.

    python -m benchmarks.npz_to_parquet mnist.npz OUT_DIR
"""
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def write(folder: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    cells = []
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img[0]).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    pq.write_table(pa.table({"image": cells, "label": pa.array(y, pa.int64())}),
                   folder / f"{split}-00000-of-00001.parquet")


if __name__ == "__main__":
    z, out = np.load(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        write(out, split, z[f"{split}_x"], z[f"{split}_y"])
    print(f"wrote {out}: {len(z['train_y'])} train, {len(z['test_y'])} test")
