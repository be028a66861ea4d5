#!/usr/bin/env python3
"""Damaged slides, model files and annotations for the damaged-input tests (tests/fixtures/bad/).

Each file is a good fixture with one fault a disk, a transfer or a crafted file could give it:
truncated at each structure's boundary, directories that loop, offsets past the end, zero and
absurd sizes, tile tables that disagree, corrupt JPEG data, DICOM cut short, model files with a
flipped bit or wrong tensors, annotations that are not XML. `bad/README.md` lists them; the
tests expect each to be refused with one line naming the file, and nothing written.

Standard library only. Run from the repository root: python3 tools/make_bad_inputs.py
(tools/make_bad_checkpoints.py makes the damaged checkpoints beside them.)
"""
import pathlib
import struct

FIXTURES = pathlib.Path("tests/fixtures")
OUT = FIXTURES / "bad"
SLIDE = FIXTURES / "slides" / "odd_vips_jpeg.tif"  # BigTIFF, JPEG, 2 levels, 75 KB
DICOM = FIXTURES / "slides_more" / "tiny_dicom" / "level2.dcm"
ODD_DICOM = FIXTURES / "slides_more" / "odd_dicom" / "level1.dcm"
SVS = FIXTURES / "slides_more" / "tiny_aperio.svs"
MODEL = pathlib.Path("models") / "unet_demo_w8.bpk"


def u16(data, at):
    return struct.unpack_from("<H", data, at)[0]


def u64(data, at):
    return struct.unpack_from("<Q", data, at)[0]


def entries(data, ifd):
    """(tag, type, count, position of the value field) of a BigTIFF IFD's entries."""
    return [
        (u16(data, at), u16(data, at + 2), u64(data, at + 4), at + 12)
        for at in (ifd + 8 + 20 * i for i in range(u64(data, ifd)))
    ]


def field(data, ifd, tag):
    """(type, count, position of the value field) of `tag` in the IFD at `ifd`."""
    for t, kind, count, at in entries(data, ifd):
        if t == tag:
            return kind, count, at
    raise KeyError(tag)


def set_value(data, ifd, tag, value):
    """Sets a one-value entry in place, as a LONG (which every such tag may be)."""
    kind, count, at = field(data, ifd, tag)
    assert count == 1
    struct.pack_into("<H", data, at - 10, 4)
    struct.pack_into("<Q", data, at, value)


def array_at(data, ifd, tag):
    """Where a LONG or LONG8 array entry's values are, their count and their size."""
    kind, count, at = field(data, ifd, tag)
    size = {4: 4, 16: 8}[kind]
    return (u64(data, at) if count * size > 8 else at), count, size


def slides():
    good = SLIDE.read_bytes()
    ifd0 = u64(good, 8)
    ifd1 = u64(good, ifd0 + 8 + 20 * u64(good, ifd0))
    offsets0, tiles0, offset_size = array_at(good, ifd0, 324)
    counts0, _, count_size = array_at(good, ifd0, 325)
    fmt = {4: "<I", 8: "<Q"}
    first_tile = struct.unpack_from(fmt[offset_size], good, offsets0)[0]
    cases = {}

    def edited(name, edit):
        data = bytearray(good)
        edit(data)
        cases[name] = bytes(data)

    # Truncated at each structure's boundary.
    cases["slide_header_only.tif"] = good[:16]
    cases["slide_cut_in_first_tile.tif"] = good[: first_tile + 100]
    cases["slide_cut_before_ifd0.tif"] = good[:ifd0]
    cases["slide_cut_in_ifd0.tif"] = good[: ifd0 + 8 + 20 * 5]
    cases["slide_cut_before_ifd1.tif"] = good[:ifd1]
    cases["slide_cut_in_tile_table.tif"] = good[: offsets0 + 12]
    cases["slide_empty.tif"] = b""
    cases["slide_not_tiff.tif"] = b"GIF89a" + good[6:4096]
    # Directories that loop: IFD 1's next pointing back at IFD 0, IFD 0's at itself.
    edited(
        "slide_ifd_loop.tif",
        lambda d: struct.pack_into("<Q", d, ifd1 + 8 + 20 * u64(good, ifd1), ifd0),
    )
    edited("slide_ifd_self_loop.tif", lambda d: struct.pack_into("<Q", d, ifd0 + 8 + 20 * u64(good, ifd0), ifd0))
    # Offsets past the end.
    edited("slide_ifd0_past_end.tif", lambda d: struct.pack_into("<Q", d, 8, len(good) + 4096))
    edited("slide_tile_offset_past_end.tif", lambda d: struct.pack_into(fmt[offset_size], d, offsets0, len(good) * 4))
    edited("slide_tile_count_past_end.tif", lambda d: struct.pack_into(fmt[count_size], d, counts0, 0xFFFFFF00))
    edited(
        "slide_tile_offsets_all_one.tif",
        lambda d: [struct.pack_into(fmt[offset_size], d, offsets0 + offset_size * i, 1) for i in range(tiles0)],
    )
    # Zero and absurd sizes.
    edited("slide_zero_width.tif", lambda d: set_value(d, ifd0, 256, 0))
    edited("slide_absurd_width.tif", lambda d: set_value(d, ifd0, 256, 0xFFFFFFFF))
    edited("slide_zero_tile_width.tif", lambda d: set_value(d, ifd0, 322, 0))
    edited("slide_tile_width_511.tif", lambda d: set_value(d, ifd0, 322, 511))
    edited("slide_absurd_tile.tif", lambda d: (set_value(d, ifd0, 322, 1 << 30), set_value(d, ifd0, 323, 1 << 30)))
    edited("slide_zero_samples.tif", lambda d: set_value(d, ifd0, 277, 0))
    # Tile tables that disagree with the image: fewer offsets than tiles.
    edited("slide_too_few_tiles.tif", lambda d: struct.pack_into("<Q", d, field(good, ifd0, 324)[2] - 8, 1))
    # Corrupt JPEG data: the first tile's entropy-coded data overwritten, its markers cut.
    edited("slide_corrupt_jpeg.tif", lambda d: d.__setitem__(slice(first_tile, first_tile + 600), b"\xff\x00" * 300))
    edited("slide_jpeg_no_markers.tif", lambda d: d.__setitem__(slice(first_tile, first_tile + 4), b"\0\0\0\0"))
    # JPEG tiles labelled JPEG 2000 (Aperio's 33003): the JPEG 2000 decoder's error, named.
    edited("slide_jpeg2000.tif", lambda d: set_value(d, ifd0, 259, 33003))
    # Aperio SVS cut inside its first level.
    svs = SVS.read_bytes()
    cases["svs_truncated.svs"] = svs[: len(svs) // 3]
    # DICOM: cut in the attributes, cut in the frames, not DICOM after the preamble.
    dicom = DICOM.read_bytes()
    cases["dicom_cut_in_attributes.dcm"] = dicom[:400]
    cases["dicom_cut_in_frames.dcm"] = dicom[: len(dicom) * 2 // 3]
    cases["dicom_bad_magic.dcm"] = dicom[:128] + b"DICX" + dicom[132:]
    # A value (the ICC profile, OB) declaring 768 MiB in a 30 kB file: refused, never allocated.
    huge = bytearray(dicom)
    icc = huge.index(b"\x28\x00\x00\x20OB\x00\x00")
    struct.pack_into("<I", huge, icc + 8, 0x3000_0000)
    cases["dicom_huge_value_length.dcm"] = bytes(huge)
    # An unknown VR in the file meta group: read (as dicom-rs does) as 2 reserved bytes and a
    # 4-byte length, which here is the UID's first characters: 775 MB. Found by the fuzzer.
    unknown = bytearray(dicom)
    at = unknown.index(b"\x02\x00\x12\x00UI")
    unknown[at + 4 : at + 6] = b"\xff\xff"
    cases["dicom_unknown_vr.dcm"] = bytes(unknown)
    # The file meta group's last element damaged (a run zeroed) so that, read whole as dicom-rs
    # reads it, it ends past the group's declared length: the data set starts 2 bytes later
    # than the group length says, and read from there, a value claims 1.1 GB. Found by the
    # fuzzer.
    overrun = bytearray(dicom)
    at = overrun.index(b"\x02\x00\x13\x00SH")
    end = 144 + struct.unpack_from("<I", overrun, 140)[0]
    overrun[at + 5 : end + 1] = bytes(end + 1 - at - 5)
    cases["dicom_meta_overrun.dcm"] = bytes(overrun)
    # 39 bytes cut out of the attributes (ImagedVolumeWidth's value to TotalPixelMatrixRows's
    # header): the elements still parse, the total size is gone, so it reads as one 256 x 256
    # frame; but a second parser that read past the pixel data met a 3.4 GB value. Found by
    # the fuzzer. Readable, so named `readable_`: it must open, in little memory.
    odd = ODD_DICOM.read_bytes()
    at = odd.index(b"\x48\x00\x03\x00FL") - 6
    cases["readable_dicom_attributes_cut_out.dcm"] = odd[:at] + odd[at + 39 :]
    return cases


def models():
    good = MODEL.read_bytes()
    cases = {}
    flipped = bytearray(good)
    flipped[len(good) * 3 // 4] ^= 0x08
    cases["model_bit_flipped.bpk"] = bytes(flipped)
    cases["model_truncated.bpk"] = good[: len(good) // 2]
    cases["model_not_burnpack.bpk"] = b"PK\x03\x04" + b"\0" * 60
    cases["model_empty.bpk"] = b""
    return cases


def annotations():
    return {
        "annotations_not_xml.xml": b"slide,x,y\ntumor_001,10,20\n",
        "annotations_no_polygon.xml": b'<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        b'<Annotation Name="a" PartOfGroup="Tumor"><Coordinates><Coordinate Order="0" X="1" Y="2"/>'
        b"</Coordinates></Annotation></Annotations></ASAP_Annotations>",
        "annotations_nan.xml": b'<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        b'<Annotation Name="a" PartOfGroup="Tumor"><Coordinates><Coordinate Order="0" X="1" Y="2"/>'
        b'<Coordinate Order="1" X="NaN" Y="2"/><Coordinate Order="2" X="5" Y="inf"/>'
        b"</Coordinates></Annotation></Annotations></ASAP_Annotations>",
        "annotations_cut.xml": b'<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="a" Part',
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    made = {**slides(), **models(), **annotations()}
    for name, data in made.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(made)} files to {OUT}")


if __name__ == "__main__":
    main()
