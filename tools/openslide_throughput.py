#!/usr/bin/env python3
"""512x512 level-0 region reads per second with OpenSlide, one thread and all cores, over the
same pseudo-random regions as `cargo run --release -p wsi --example region_throughput`.

pip install openslide-python openslide-bin; python3 tools/openslide_throughput.py SLIDE [COUNT]
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openslide

SIDE = 512


def regions(width, height, count):
    state = 12345
    out = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) % (1 << 31)
        x = state % max(width - SIDE + 1, 1)
        state = (state * 1103515245 + 12345) % (1 << 31)
        y = state % max(height - SIDE + 1, 1)
        out.append((x, y))
    return out


def main():
    path = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    width, height = openslide.OpenSlide(path).dimensions
    todo = regions(width, height, count)

    slide = openslide.OpenSlide(path)  # fresh: no warm tile cache
    start = time.perf_counter()
    for x, y in todo:
        slide.read_region((x, y), 0, (SIDE, SIDE))
    one = count / (time.perf_counter() - start)

    slide = openslide.OpenSlide(path)
    threads = os.cpu_count()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda r: slide.read_region(r, 0, (SIDE, SIDE)), todo))
    many = count / (time.perf_counter() - start)
    print(f"openslide {path}: {count} regions of {SIDE}x{SIDE}: 1 thread {one:.1f}/s, {threads} threads {many:.1f}/s")


if __name__ == "__main__":
    main()
