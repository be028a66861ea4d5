#!/usr/bin/env python3
r"""Slides in the codecs besides JPEG that OpenSlide reads (Aperio SVS and a DICOM-WSI series with JPEG
2000 tiles, a Zstandard TIFF), with OpenSlide reads as references.

usage: python make_codec_slides.py OUTDIR SOURCE.tif DICOM_FOLDER
e.g.   python tools/make_codec_slides.py tests/fixtures/slides_codecs tests/fixtures/slides/odd_vips_jpeg.tif \
           tests/fixtures/slides_more/odd_dicom

Needs: pip install numpy pillow tifffile imagecodecs openslide-python openslide-bin pydicom, and
OpenJPEG's opj_compress (apt install libopenjp2-tools). make_more_slides.py beside it provides the
regions, references and tolerances; Pillow's OpenJPEG encodes the RGB and 4:4:4 tiles, opj_compress the
4:2:2 ones; OpenSlide 4 reads Aperio's JPEG 2000 compressions with OpenJPEG.

For a source NAME_*.tif it writes into OUTDIR three Aperio SVS files made with tifffile from the TIFF's
level-0 pixels as OpenSlide reads them, with levels at downsample 1 and 4 (box filter, sizes floored),
240x240 tiles (Aperio's JPEG 2000 tile side; edge tiles padded with black) and a stripped JPEG thumbnail
in IFD 1:
  NAME_aperio_j2k_rgb.svs    compression 33005 (Aperio "JPEG 2000 RGB"): each tile a raw JPEG 2000
                             codestream of the RGB pixels with the irreversible colour transform (MCT 1),
                             9/7 wavelet, compression ratio RATIO.
  NAME_aperio_j2k_ycbcr.svs  compression 33003 (Aperio "JPEG 2000 YCbCr"): each tile's components are
                             JFIF YCbCr (Pillow's RGB -> YCbCr), coded without a colour transform (MCT 0),
                             so the reader converts them to RGB, as OpenSlide does.
  NAME_aperio_j2k_ycbcr422.svs  the same with Cb and Cr at half the width (each the rounded mean of a
                             pair: 4:2:2, XRsiz 2, as Aperio's own 33003 tiles are), by opj_compress.
and a DICOM-WSI series transcoded from DICOM_FOLDER's (JPEG baseline, one instance a level):
  NAME_dicom_j2k/            each frame decoded (imagecodecs) and coded again as a JPEG 2000 codestream
                             as the 33005 slide's tiles are (MCT 1: the irreversible colour transform),
                             transfer syntax 1.2.840.10008.1.2.4.91, PhotometricInterpretation YBR_ICT
                             (as the standard names that transform), the rest of the data set as it was
                             but for new SOP Instance UIDs. The label says YCbCr, the codestream inverts
                             its own transform: the decoder's output is RGB (OpenSlide 4.0.1 takes it so).
and a generic TIFF:
  NAME_zstd.tif              SOURCE's stored levels (as tifffile decodes them) in 256x256 tiles, Zstandard
                             (compression 50000, level 9) with the horizontal predictor, the levels in the
                             IFD chain, the source's resolution in the resolution tags: lossless, so its
                             tolerance is 0.
  ref/<fixture>__<region>.png  OpenSlide 4 read_region of each region (make_more_slides.py's regions).
  slides.json                per fixture, as make_more_slides.py writes it.

Tolerances: OpenSlide's read is the stored tiles decoded (the second decoder: imagecodecs' OpenJPEG on
each codestream, or opj_decompress on each 4:2:2 component alone, YCbCr converted with OpenSlide's JFIF
formula), so a reader is held to it, not to the pixels the tiles were encoded from: the larger of a floor
for JPEG 2000 decoders' rounding (FLOOR: max 2, p99 1, mean 0.02) and the second decoder's difference.
The encoding loss (`measured.vs_source`) is recorded beside it. The second decoder of the Zstandard
TIFF is tifffile (imagecodecs' zstd).
"""
import io, os, subprocess, sys, tempfile, uuid

import imagecodecs
import numpy as np
import openslide
import pydicom
import tifffile
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_more_slides  # noqa: E402
from make_more_slides import dicom_level_pixels, references, source_mpp  # noqa: E402

J2K_TILE = 240
RATIO = 12            # compression ratio of the tiles (about 2 bits a pixel)
FLOOR = (2, 1, 0.02)  # max, p99, mean: JPEG 2000 decoders' rounding
KINDS = {"rgb": (33005, 1), "ycbcr": (33003, 0), "ycbcr422": (33003, 0)}   # kind: (compression, MCT)


def j2k_tiles(arr, kind):
    """Each J2K_TILE tile of arr (edge tiles padded with black) as a raw JPEG 2000 codestream."""
    return (encode_tile(tile, kind) for tile in make_more_slides.tiles_of(arr, J2K_TILE))


def encode_tile(tile, kind):
    image = Image.fromarray(tile)
    if kind == "ycbcr422":
        return encode_422(np.asarray(image.convert("YCbCr")))
    if kind == "ycbcr":   # the components are Y, Cb, Cr, coded as they are
        image = Image.frombytes("RGB", image.size, image.convert("YCbCr").tobytes())
    out = io.BytesIO()
    image.save(out, "JPEG2000", no_jp2=True, irreversible=True, mct=KINDS[kind][1],
               quality_mode="rates", quality_layers=[RATIO])
    return out.getvalue()


def encode_422(ycc):
    """Y at full size, Cb and Cr halved across (rounded pair means), as one codestream (opj_compress)."""
    y = ycc[..., 0]
    chroma = [((ycc[:, 0::2, c].astype(np.uint16) + ycc[:, 1::2, c] + 1) // 2).astype(np.uint8)
              for c in (1, 2)]
    h, w = y.shape
    with tempfile.TemporaryDirectory() as tmp:
        raw, j2k = os.path.join(tmp, "tile.raw"), os.path.join(tmp, "tile.j2k")
        with open(raw, "wb") as f:
            for plane in [y] + chroma:
                f.write(np.ascontiguousarray(plane).tobytes())
        subprocess.run(["opj_compress", "-i", raw, "-o", j2k, "-F", "%d,%d,3,8,u@1x1:2x1:2x1" % (w, h),
                        "-I", "-r", str(RATIO), "-mct", "0"], check=True, stdout=subprocess.DEVNULL)
        with open(j2k, "rb") as f:
            return f.read()


def ycbcr_to_rgb(ycc):
    """JFIF YCbCr -> RGB, rounded and clamped, as OpenSlide converts Aperio's 33003 tiles."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    cb, cr = cb - 128, cr - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.34414 * cb - 0.71414 * cr, y + 1.772 * cb], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_422(codestream, side):
    """Y, Cb, Cr of a side x side 4:2:2 codestream, each decoded alone by opj_decompress (imagecodecs
    would convert them as sYCC from unrounded samples), the chroma repeated across, as OpenSlide takes
    them."""
    planes = []
    with tempfile.TemporaryDirectory() as tmp:
        j2k = os.path.join(tmp, "tile.j2k")
        with open(j2k, "wb") as f:
            f.write(codestream)
        for c in range(3):
            raw = os.path.join(tmp, "c%d.raw" % c)
            subprocess.run(["opj_decompress", "-i", j2k, "-o", raw, "-c", str(c)], check=True,
                           stdout=subprocess.DEVNULL)
            plane = np.fromfile(raw, np.uint8).reshape(side, -1)
            planes.append(np.repeat(plane, side // plane.shape[1], 1))
    return np.stack(planes, -1)


def mosaic(codestreams, width, height, side, kind):
    """A level from its side x side codestreams in row-major order, each as OpenSlide reads it, by a
    second decoder: imagecodecs' OpenJPEG, or opj_decompress a component at a time for 4:2:2."""
    across = -(-width // side)
    out = np.zeros((-(-height // side) * side, across * side, 3), np.uint8)
    for i, codestream in enumerate(codestreams):
        if kind == "ycbcr422":
            tile = ycbcr_to_rgb(decode_422(codestream, side))
        elif kind == "ycbcr":
            tile = ycbcr_to_rgb(imagecodecs.jpeg2k_decode(codestream))
        else:
            tile = imagecodecs.jpeg2k_decode(codestream)
        r, c = divmod(i, across)
        out[r * side:(r + 1) * side, c * side:(c + 1) * side] = tile
    return out[:height, :width]


def stored_levels(path, kind):
    """The tiled levels as stored, decoded by the second decoder."""
    levels = []
    with tifffile.TiffFile(path) as tf, open(path, "rb") as f:
        for page in (p for p in tf.pages if p.is_tiled):
            codestreams = []
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                f.seek(offset)
                codestreams.append(f.read(count))
            H, W = page.shape[:2]
            levels.append(mosaic(codestreams, W, H, J2K_TILE, kind))
    return levels


def make_svs(src, path, name, kind):
    """make_more_slides.py's SVS with J2K_TILE tiles of the kind's JPEG 2000 codestreams."""
    compression, _ = KINDS[kind]

    def write_level(tif, a, desc):
        tif.write(j2k_tiles(a, kind), shape=a.shape, dtype=np.uint8, tile=(J2K_TILE, J2K_TILE),
                  compression=compression, photometric="rgb", description=desc, metadata=None)
    coding = " J2K/KDU Q=30" if kind == "rgb" else " J2K/YUV16 Q=30"   # as Aperio's descriptions say
    made_from, _ = make_more_slides.make_svs(src, path, name, J2K_TILE, coding, write_level)
    return made_from


def make_dicom(src_dir, outdir, fid):
    """The series of src_dir (JPEG baseline) with each frame coded again as JPEG 2000; returns the files,
    the pixels each level was encoded from and the stored levels decoded by a second decoder."""
    kind = "rgb"
    files = sorted(f for f in os.listdir(src_dir) if f.endswith(".dcm"))
    os.makedirs(os.path.join(outdir, fid), exist_ok=True)
    made_from, stored = [], []
    for i, f in enumerate(files):
        level = dicom_level_pixels(os.path.join(src_dir, f))
        ds = pydicom.dcmread(os.path.join(src_dir, f))
        side, n = int(ds.Columns), int(ds.NumberOfFrames)
        frames = [imagecodecs.jpeg8_decode(fr) for fr in
                  pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=n)]
        coded = [encode_tile(fr, kind) for fr in frames]
        # deterministic (pydicom 3's generate_uid ignores entropy_srcs without a prefix)
        uid = "2.25.%d" % uuid.uuid5(uuid.NAMESPACE_OID, "make_codec_slides/%s/%d" % (fid, i)).int
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.91"
        ds.PhotometricInterpretation = "YBR_ICT"
        ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_15444_1"]
        ds.PixelData = pydicom.encaps.encapsulate(coded, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds.save_as(os.path.join(outdir, fid, f), enforce_file_format=True)
        made_from.append((level, "the source series' level %d as imagecodecs decodes it" % i))
        stored.append(mosaic(coded, level.shape[1], level.shape[0], side, kind))
    return [fid + "/" + f for f in files], made_from, stored


def held_to_second_decoder(regs, floor=FLOOR):
    """Each region's tolerance: the floor, or the second decoder's difference where larger."""
    for r in regs:
        dec = r["measured"]["vs_second_decoder"]
        r["tolerance"] = {"max_abs": max(floor[0], dec["max_abs"]), "p99_abs": max(floor[1], dec["p99_abs"]),
                          "mean_abs": max(floor[2], dec["mean_abs"])}
    return regs


def make_zstd(src, path):
    """SOURCE's stored levels as a Zstandard TIFF pyramid; returns them, as encoded."""
    levels = make_more_slides.source_levels(src)
    pixels_per_cm = 1e4 / source_mpp(src)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, a in enumerate(levels):
            scale = levels[0].shape[1] / a.shape[1]
            tif.write(a, tile=(256, 256), compression="zstd", compressionargs={"level": 9}, predictor=True,
                      photometric="rgb", subfiletype=1 if i else 0, metadata=None, resolutionunit="CENTIMETER",
                      resolution=(pixels_per_cm / scale, pixels_per_cm / scale))
    return [(a, "the source's level %d as tifffile decodes it" % i) for i, a in enumerate(levels)]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    outdir, src, dicom_src = (os.path.abspath(a) for a in sys.argv[1:])
    os.makedirs(os.path.join(outdir, "ref"), exist_ok=True)
    name = os.path.basename(src).split("_")[0]
    entries = []
    for kind, (compression, mct) in KINDS.items():
        fid = "%s_aperio_j2k_%s" % (name, kind)
        path = os.path.join(outdir, fid + ".svs")
        made_from = make_svs(src, path, name, kind)
        info, regs = references(outdir, fid, fid + ".svs", stored_levels(path, kind), made_from, FLOOR)
        held_to_second_decoder(regs)
        assert info["vendor"] == "aperio"
        entries.append(dict({"file": fid + ".svs", "kind": "aperio", "open": fid + ".svs",
                             "bytes": os.path.getsize(path),
                             "made_with": "tifffile %s, Pillow %s (OpenJPEG) from OpenSlide's level-0 read of the "
                                          "source: compression %d, raw codestreams, MCT %d, 9/7 wavelet, ratio %d, "
                                          "%dx%d tiles, 1/4 box-filtered levels, stripped JPEG thumbnail in IFD 1"
                                          % (tifffile.__version__, Image.__version__, compression, mct, RATIO,
                                             J2K_TILE, J2K_TILE),
                             "source": os.path.relpath(src, outdir), "source_mpp_rounded": source_mpp(src)},
                            **info, regions=regs))
    fid = "%s_dicom_j2k" % name
    files, made_from, stored = make_dicom(dicom_src, outdir, fid)
    info, regs = references(outdir, fid, files[0], stored, made_from, FLOOR)
    assert info["vendor"] == "dicom" and info["level_count"] == len(files)
    entries.append(dict({"file": fid, "kind": "dicom", "open": files[0], "files": files,
                         "bytes": sum(os.path.getsize(os.path.join(outdir, f)) for f in files),
                         "made_with": "pydicom %s, Pillow %s (OpenJPEG) from %s: each frame coded again as "
                                      "JPEG 2000 (1.2.840.10008.1.2.4.91) with MCT 1, PhotometricInterpretation "
                                      "YBR_ICT" % (pydicom.__version__, Image.__version__,
                                                   os.path.relpath(dicom_src, outdir)),
                         "source": os.path.relpath(dicom_src, outdir)},
                        **info, regions=held_to_second_decoder(regs)))
    fid = "%s_zstd" % name
    path = os.path.join(outdir, fid + ".tif")
    made_from = make_zstd(src, path)
    with tifffile.TiffFile(path) as tf:
        stored = [page.asarray() for page in tf.pages]
    info, regs = references(outdir, fid, fid + ".tif", stored, made_from, (0, 0, 0))
    assert info["vendor"] == "generic-tiff" and info["level_count"] == len(stored)
    entries.append(dict({"file": fid + ".tif", "kind": "tiff", "open": fid + ".tif", "bytes": os.path.getsize(path),
                         "made_with": "tifffile %s from the source's stored levels: Zstandard level 9, horizontal "
                                      "predictor, 256x256 tiles" % tifffile.__version__,
                         "source": os.path.relpath(src, outdir), "source_mpp_rounded": source_mpp(src)},
                        **info, regions=held_to_second_decoder(regs, (0, 0, 0))))
    make_more_slides.write_entries(outdir, entries)

if __name__ == "__main__":
    main()
