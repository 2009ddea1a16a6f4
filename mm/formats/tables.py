"""Hugging Face datasets on local disk (parquet / arrow files, ``save_to_disk`` folders), read lazily.

The table is memory-mapped by the ``datasets`` library (a parquet file is converted once, page
by page, into an arrow file in its cache). Rows are read in batches without their image columns; an image column
(``datasets.Image``, a list of them, or any ``struct<bytes, path>``) contributes per row only an
``EmbeddedImage`` (file, row, column, index) whose bytes are read when the image is opened, or
the stored path when no bytes are embedded. So a 100k-row set with images is held as text.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
from collections.abc import Iterator

from PIL import Image

from mm.imports import require
from mm.visual import LazyImage

BATCH = 512


def _is_image(t) -> bool:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}


def open_dataset(path: str):
    """The ``datasets.Dataset`` stored at ``path`` (parquet/arrow file, save_to_disk or parquet folder),
    memory-mapped."""
    datasets = require("datasets", "Hugging Face datasets")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_dict.json")):
            splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
            raise ValueError(
                f"{path} holds the splits {splits}: point at one, e.g. {os.path.join(path, splits[0])}"
            )
        if os.path.isfile(os.path.join(path, "state.json")):
            return datasets.load_from_disk(path)
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not files:
            raise ValueError(
                f"{path}: no save_to_disk dataset (state.json) and no parquet files in this folder"
            )
        return datasets.concatenate_datasets([datasets.Dataset.from_file(arrow_cache(f)) for f in files])
    return datasets.Dataset.from_file(path if path.endswith(".arrow") else arrow_cache(path))


def arrow_cache(parquet: str) -> str:
    """The parquet file as an uncompressed arrow file in the ``datasets`` cache, written once.

    Read page by page (buffered, a few hundred rows at a time), so converting holds a few MB
    whatever the row-group size; ``datasets.Dataset.from_parquet`` loads whole row groups (about
    100 MB each in image sets ``datasets`` wrote: ~700 MB peak for a 300 MB file, measured)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = os.stat(parquet)
    key = hashlib.sha1(f"{os.path.abspath(parquet)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    folder = os.path.join(datasets.config.HF_DATASETS_CACHE, "mmpost_parquet")
    out = os.path.join(folder, f"{key}.arrow")
    if os.path.isfile(out):
        return out
    os.makedirs(folder, exist_ok=True)
    src = pq.ParquetFile(parquet, buffer_size=1 << 20, pre_buffer=False)
    tmp = f"{out}.{os.getpid()}.tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, src.schema_arrow) as writer:
        for batch in src.iter_batches(batch_size=256):
            writer.write_batch(batch)
    os.replace(tmp, out)  # atomic: a concurrent reader sees no half-written file
    return out


class TableRows:
    """The rows of one dataset as dicts, image columns as ``EmbeddedImage`` (or path) references."""

    def __init__(self, path: str):
        self.path = path
        self.ds = open_dataset(path)
        schema = self.ds.data.table.schema
        self.image_columns = [f.name for f in schema if _is_image(f.type)]
        self.text_columns = [f.name for f in schema if f.name not in self.image_columns]

    @property
    def table(self):  # memory-mapped pyarrow.Table; not pickled (the Dataset re-opens its files)
        return self.ds.data.table

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        for start in range(0, len(self), BATCH):
            part = self.table.slice(start, BATCH)
            rows = part.select(self.text_columns).to_pylist()
            for name in self.image_columns:
                for j, refs in enumerate(self._refs(part.column(name), start, name)):
                    rows[j][name] = refs
            yield from enumerate(rows, start)

    def _refs(self, column, start: int, name: str) -> list:
        """Per row: a reference for each image (list columns) or the one image, without reading bytes."""
        import pyarrow as pa
        import pyarrow.compute as pc

        listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        flat = pc.list_flatten(column) if listed else column
        has_bytes = pc.is_valid(pc.struct_field(flat, "bytes")).to_pylist()
        paths = pc.struct_field(flat, "path").to_pylist()
        present = pc.is_valid(column).to_pylist()

        def ref(row: int, k: int | None, flat_i: int):
            return EmbeddedImage(self, row, name, k) if has_bytes[flat_i] else paths[flat_i]

        if not listed:
            return [ref(start + j, None, j) if present[j] else None for j in range(len(present))]
        out, i = [], 0
        for j, n in enumerate(pc.list_value_length(column).to_pylist()):
            n = n or 0
            out.append([ref(start + j, k, i + k) for k in range(n)] if present[j] else None)
            i += n
        return out

    def image_bytes(self, row: int, name: str, k: int | None) -> bytes:
        value = self.table.slice(row, 1).column(name).to_pylist()[0]
        return (value if k is None else value[k])["bytes"]


class EmbeddedImage(LazyImage):
    """Image bytes stored in a table cell; read (one row, one column) only when the image is opened."""

    def __init__(self, rows: TableRows, row: int, column: str, index: int | None):
        self.rows, self.row, self.column, self.index = rows, row, column, index

    @property
    def key(self) -> str:
        return self.column if self.index is None else f"{self.column}[{self.index}]"

    def data(self) -> bytes:
        return self.rows.image_bytes(self.row, self.column, self.index)

    def read(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data()))

    def __str__(self) -> str:
        return f"{self.rows.path} row {self.row} {self.key}"

    def _id(self) -> tuple:
        return self.rows.path, self.row, self.key

    def __eq__(self, other) -> bool:
        return isinstance(other, EmbeddedImage) and self._id() == other._id()

    def __hash__(self) -> int:
        return hash(self._id())
