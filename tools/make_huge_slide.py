#!/usr/bin/env python3
"""A pyramidal slide of Camelyon's size (default 100000 x 200000) in seconds and a few MB.

Only a handful of distinct tiles are encoded for the large levels: the demo slide's tissue
tiles (its tumour among them) and one of glass. Their TileOffsets point at those few, a tissue
tile where the tile falls in one of the tissue sections (ellipses covering --tissue of the
slide), the glass tile elsewhere. The small levels (at most 256 tiles) are drawn whole, the
sections filled with a scaled-down tissue texture, so that thumbnails and the tissue detection
see the slide's layout. The file is small while every reader and the model see a slide of full
size. BigTIFF, 512 tiles, JPEG (YCbCr 4:2:0, each tile a complete
JPEG), levels halving in the main IFD chain, 0.243 µm/px: OpenSlide reads it as generic-tiff.

  python3 tools/make_huge_slide.py /tmp/huge.tif [--width 100000 --height 200000 --tissue 0.25]

Needs numpy, Pillow and openslide-python (to read the demo slide's tiles).
"""

import argparse
import io
import struct
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

TILE = 512
MPP = 0.243
DEMO = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pipeline" / "demo_vips_jpeg.tif"


def jpeg(tile):
    out = io.BytesIO()
    Image.fromarray(tile).save(out, "JPEG", quality=90, subsampling=2)
    return out.getvalue()


def demo_tiles():
    """The demo slide's level-0 tiles that hold tissue (saturation), and a glass tile."""
    slide = openslide.OpenSlide(str(DEMO))
    width, height = slide.dimensions
    tissue, glass = [], None
    for y in range(0, height - TILE + 1, TILE):
        for x in range(0, width - TILE + 1, TILE):
            rgb = np.asarray(slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB"))
            saturation = (rgb.max(axis=2).astype(int) - rgb.min(axis=2)).mean()
            if saturation > 40:
                tissue.append(jpeg(rgb))
            elif glass is None and saturation < 10:
                glass = jpeg(rgb)
    if glass is None:
        glass = jpeg(np.full((TILE, TILE, 3), 236, np.uint8))
    return tissue, glass


def drawn_level(width, height, downsample, sections, texture, glass_colour):
    """A small level drawn whole: glass, and the sections filled with `texture` repeated."""
    ys, xs = np.mgrid[0:height, 0:width]
    x0, y0 = (xs + 0.5) * downsample, (ys + 0.5) * downsample
    inside = np.zeros((height, width), bool)
    for cx, cy, rx, ry in sections:
        inside |= ((x0 - cx) / rx) ** 2 + ((y0 - cy) / ry) ** 2 <= 1
    reps = (-(-height // texture.shape[0]), -(-width // texture.shape[1]), 1)
    tissue = np.tile(texture, reps)[:height, :width]
    return np.where(inside[..., None], tissue, np.array(glass_colour, np.uint8))


def tissue_sections(width, height, fraction, rng):
    """Ellipses (cx, cy, rx, ry) in level-0 pixels, scaled so that they cover about `fraction`."""
    sections = []
    for i in range(4):
        cx = width * (0.3 + 0.4 * rng.random())
        cy = height * (i + 0.5) / 4
        sections.append([cx, cy, width * (0.2 + 0.1 * rng.random()), height * (0.08 + 0.03 * rng.random())])
    area = sum(np.pi * rx * ry for _, _, rx, ry in sections) / (width * height)
    scale = np.sqrt(fraction / area)
    return [(cx, cy, rx * scale, ry * scale) for cx, cy, rx, ry in sections]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=100_000)
    parser.add_argument("--height", type=int, default=200_000)
    parser.add_argument("--tissue", type=float, default=0.25, help="fraction of the slide that is tissue")
    args = parser.parse_args()
    rng = np.random.default_rng(17)
    tissue, glass = demo_tiles()
    decoded = lambda blob: np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    texture = np.asarray(Image.fromarray(decoded(tissue[0])).resize((64, 64), Image.BILINEAR))
    glass_colour = decoded(glass).reshape(-1, 3).mean(axis=0).round()
    sections = tissue_sections(args.width, args.height, args.tissue, rng)

    blobs = tissue + [glass]
    levels = []
    width, height, downsample = args.width, args.height, 1
    while True:
        across, down = -(-width // TILE), -(-height // TILE)
        if across * down <= 256:
            image = drawn_level(width, height, downsample, sections, texture, glass_colour)
            choice = []
            for ty in range(down):
                for tx in range(across):
                    tile = np.full((TILE, TILE, 3), 0, np.uint8)
                    part = image[ty * TILE : (ty + 1) * TILE, tx * TILE : (tx + 1) * TILE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    choice.append(len(blobs))
                    blobs.append(jpeg(tile))
            choice = np.array(choice)
        else:
            # Each tile's centre, in level-0 pixels: inside a section or not.
            ty, tx = np.mgrid[0:down, 0:across]
            x0 = (tx * TILE + TILE / 2) * downsample
            y0 = (ty * TILE + TILE / 2) * downsample
            inside = np.zeros((down, across), bool)
            for cx, cy, rx, ry in sections:
                inside |= ((x0 - cx) / rx) ** 2 + ((y0 - cy) / ry) ** 2 <= 1
            choice = np.where(inside, (tx * 7 + ty * 13) % len(tissue), len(tissue)).ravel()
        levels.append((width, height, choice))
        if max(width, height) <= TILE:
            break
        width, height, downsample = width // 2, height // 2, downsample * 2

    header = 16
    offsets, position = [], header
    for blob in blobs:
        offsets.append(position)
        position += len(blob)

    with open(args.out, "wb") as f:
        f.write(b"II+\x00" + struct.pack("<HHQ", 8, 0, 0))
        for blob in blobs:
            f.write(blob)
        ifd_offsets = []
        for index, (width, height, choice) in enumerate(levels):
            tile_offsets = np.array(offsets, np.uint64)[choice]
            tile_counts = np.array([len(b) for b in blobs], np.uint64)[choice]
            # One LONG8 fits in its entry; more go before the directory.
            arrays = {}
            for name, values in (("offsets", tile_offsets), ("counts", tile_counts)):
                if len(values) == 1:
                    arrays[name] = int(values[0])
                else:
                    arrays[name] = f.tell()
                    f.write(values.astype("<u8").tobytes())
            # Pixels per cm, as a rational: 8 bytes, so inline in BigTIFF, like every value
            # of 8 bytes or fewer.
            numerator = round(1e4 / (MPP * (args.width / width)) * 1000)
            resolution = struct.pack("<II", numerator, 1000)
            entries = [
                (254, 4, 1, 1 if index else 0),  # NewSubfileType
                (256, 4, 1, width),
                (257, 4, 1, height),
                (258, 3, 3, struct.pack("<HHH", 8, 8, 8) + b"\0\0"),  # BitsPerSample
                (259, 3, 1, 7),  # JPEG
                (262, 3, 1, 6),  # YCbCr
                (277, 3, 1, 3),
                (282, 5, 1, resolution),
                (283, 5, 1, resolution),
                (284, 3, 1, 1),
                (296, 3, 1, 3),  # cm
                (322, 4, 1, TILE),
                (323, 4, 1, TILE),
                (324, 16, len(choice), arrays["offsets"]),
                (325, 16, len(choice), arrays["counts"]),
                (530, 3, 2, struct.pack("<HH", 2, 2) + b"\0" * 4),  # YCbCrSubsampling
            ]
            if f.tell() % 2:
                f.write(b"\0")
            ifd_offsets.append(f.tell())
            f.write(struct.pack("<Q", len(entries)))
            for tag, kind, count, value in entries:
                if isinstance(value, bytes):
                    packed = value
                elif kind == 3 and count == 1:
                    packed = struct.pack("<H", value) + b"\0" * 6
                elif kind == 4 and count == 1:
                    packed = struct.pack("<I", value) + b"\0" * 4
                else:
                    packed = struct.pack("<Q", value)
                f.write(struct.pack("<HHQ", tag, kind, count) + packed)
            f.write(struct.pack("<Q", 0))
        # Chain the directories, then point the header at the first.
        for i, at in enumerate(ifd_offsets[:-1]):
            f.seek(at + 8 + 20 * len(entries))
            f.write(struct.pack("<Q", ifd_offsets[i + 1]))
        f.seek(8)
        f.write(struct.pack("<Q", ifd_offsets[0]))
    print(
        f"wrote {args.out}: {args.width}x{args.height}, {len(levels)} levels, {len(tissue)} tissue tiles + glass,"
        f" {args.out.stat().st_size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
