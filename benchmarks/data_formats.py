"""Peak memory of reading a large parquet set with embedded images: mmpost's lazy reader vs loading it.

    python benchmarks/data_formats.py                        # 20k rows x ~16 KB images (~330 MB), a few minutes
    python benchmarks/data_formats.py --rows 500 --image-kb 4   # quick smoke run

A ShareGPT-style parquet file (one ``<image>`` per row, images embedded as PNG bytes, written by
``datasets.Dataset.to_parquet``) is generated in a temporary folder. Each measurement runs in
a fresh process with its own empty ``datasets`` cache:

* lazy (ours): ``RecordDataset`` over the parquet file (converted once into the arrow cache,
  memory-mapped), ``lengths()`` (every image header), then every image decoded to pixels, one
  record at a time, as the trainer does; ``lazy`` with an empty cache (the first run converts
  the file, one parquet row group at a time), ``lazy-warm`` with the cache the first left;
* eager (baseline): the same file loaded with ``datasets`` and turned into Python rows
  (``to_list()``), as a reader that materialises its rows would.

Printed per run: peak resident memory (VmHWM: includes memory-mapped file pages, which the
kernel can drop) and peak anonymous memory (RssAnon sampled every 20 ms: what the process
really holds), the part of it added by reading (above what both load first: torch,
transformers, the tiny processor), then the ratios eager / lazy. Rounds alternate lazy and eager.

Measured here (2 shared CPU cores, 20k rows, 308 MiB parquet, one round): anonymous memory added
by reading: lazy 90 MiB with an empty cache (the page-by-page conversion plus 20k records of
text), 33 MiB with a warm cache, eager 750 MiB: 8.3x and 22.7x. Peak RSS 1263 / 1196 / 1920 MiB
(RSS also counts the memory-mapped pages read, which the kernel can drop). The lazy runs took
146 / 136 s against 8 s: they count every record's tokens and decode every image, the eager
one only loads. ``datasets.Dataset.from_parquet``, which the eager run (and this reader before)
uses, alone holds ~700 MiB converting this file; 100k rows were not run on this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def memory() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon")}  # MiB


class PeakAnon:
    """The largest RssAnon seen by a thread sampling every 20 ms."""

    def __init__(self):
        import threading

        self.peak, self.done = memory()["RssAnon"], threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, memory()["RssAnon"])

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return max(self.peak, memory()["RssAnon"])


def write_set(path: str, rows: int, image_kb: int, seed: int = 0) -> int:
    """``rows`` ShareGPT rows, each with one distinct noise PNG of about ``image_kb`` KB."""
    import numpy as np
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    side = int((image_kb * 1024 / 3) ** 0.5)  # noise barely compresses: ~3 bytes per pixel
    rng = np.random.default_rng(seed)

    def gen():
        for i in range(rows):
            buf = io.BytesIO()
            PILImage.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
            yield {
                "id": f"r{i}",
                "conversations": [
                    {"from": "human", "value": f"<image>What is in picture {i}?"},
                    {"from": "gpt", "value": f"Noise number {i}."},
                ],
                "images": [{"bytes": buf.getvalue(), "path": None}],
            }

    features = Features(
        {
            "id": Value("string"),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "images": List(Image()),
        }
    )
    cache = os.path.join(os.path.dirname(path), "generator_cache")  # not ~/.cache: removed with the folder
    Dataset.from_generator(gen, features=features, cache_dir=cache).to_parquet(path)
    return side


def setup():
    """What both runs load first (torch, transformers, the tiny processor, datasets), so the
    memory they add on top of it is what reading the data costs."""
    import datasets  # noqa: F401

    from mm.encode import ConversationEncoder
    from mm.tiny import tiny_processor
    from mm.visual import VisualConfig

    return ConversationEncoder(tiny_processor(), VisualConfig())


def run_lazy(path: str, encoder) -> dict:
    from mm.dataset import RecordDataset
    from mm.visual import open_image

    t0 = time.perf_counter()
    ds = RecordDataset(path, encoder)
    ds.lengths(progress=False)
    for rec in ds.records:
        for item in rec.messages[0].visual_items():
            open_image(item["image"], decode=True)
    return {"rows": len(ds), "seconds": time.perf_counter() - t0}


def run_eager(path: str, encoder) -> dict:
    from datasets import Dataset

    t0 = time.perf_counter()
    rows = Dataset.from_parquet(path).to_list()
    return {"rows": len(rows), "seconds": time.perf_counter() - t0}


def measure(kind: str, path: str, cache: str) -> dict:
    """One run in a fresh process with the datasets cache ``cache``."""
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    r = subprocess.run(
        [sys.executable, __file__, "--child", kind, path],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--image-kb", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path = args.child
        encoder = setup()
        base, watch = memory(), PeakAnon()
        out = (run_eager if kind == "eager" else run_lazy)(path, encoder)
        print(json.dumps({**out, "anon": watch.stop(), "peak": memory()["VmHWM"], "base": base["RssAnon"]}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "set.parquet")
        side = write_set(path, args.rows, args.image_kb)
        size = os.path.getsize(path) / 2**20
        print(f"{args.rows} rows, one {side}x{side} PNG each: parquet {size:.0f} MiB")
        runs = {"lazy": [], "lazy-warm": [], "eager": []}
        for r in range(args.rounds):
            caches = {"lazy": f"{tmp}/cache{r}", "lazy-warm": f"{tmp}/cache{r}", "eager": f"{tmp}/eager{r}"}
            for kind in runs:
                runs[kind].append(measure(kind, path, caches[kind]))
                r = runs[kind][-1]
                r["added"] = r["anon"] - r["base"]
                print(
                    f"  {kind:9s}: {r['rows']} rows in {r['seconds']:.1f} s, peak RSS {r['peak']:.0f} MiB, "
                    f"peak anonymous {r['anon']:.0f} MiB ({r['added']:.0f} MiB above the {r['base']:.0f} MiB "
                    "of torch, transformers and the processor)"
                )
        added = {k: statistics.median(r["added"] for r in v) for k, v in runs.items()}
        print(
            f"anonymous memory added by reading, eager / lazy: {added['eager'] / max(added['lazy'], 1):.1f}x "
            f"(cold cache), {added['eager'] / max(added['lazy-warm'], 1):.1f}x (warm cache)"
        )


if __name__ == "__main__":
    main()
