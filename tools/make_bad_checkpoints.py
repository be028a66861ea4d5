#!/usr/bin/env python3
"""Damaged and wrong checkpoints for convert's error tests (tests/fixtures/bad/).

Made from a good fixture without PyTorch: keys are renamed in the pickle with same-length byte
replacements (pickle strings are length-prefixed), and the zip is rewritten so its checksums
hold. Run from the repo root: python3 tools/make_bad_checkpoints.py
"""
import pathlib
import struct
import zipfile

SOURCE = pathlib.Path("tests/fixtures/pytorch/unet_w4_out1_dataparallel.pth")
OUT = pathlib.Path("tests/fixtures/bad")


def rewrite(name, replacements, storage=None):
    """Copy SOURCE with the pickle's bytes replaced, in order, and `storage(name, bytes)`
    applied to each tensor's storage file."""
    with zipfile.ZipFile(SOURCE) as src, zipfile.ZipFile(OUT / name, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                for old, new in replacements:
                    # Same-length renames; or text appended at the pickle's end.
                    assert (len(old) == len(new) or data.endswith(old)) and old in data, (old, new)
                    data = data.replace(old, new) if len(old) == len(new) else data[: -len(old)] + new
            elif storage and "/data/" in info.filename:
                data = storage(info.filename.rsplit("/", 1)[1], data)
            dst.writestr(info.filename, data)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    good = SOURCE.read_bytes()
    (OUT / "truncated.pth").write_bytes(good[: len(good) * 2 // 5])
    (OUT / "not_a_checkpoint.pth").write_bytes(b"epoch,loss\n1,0.52\n2,0.41\n")
    # Another network: no `conv1.conv.0.weight`, every layer renamed.
    rewrite("other_network.pth", [(b"conv", b"fc__")])
    # BatchNorm statistics of one layer under a misspelt key: that tensor is missing.
    rewrite("missing_key.pth", [(b"conv5.conv.4.running_var", b"conv5.conv.4.running_vaX")])
    # conv2 and conv3's first weights swapped: conv2.conv.0.weight is [16, 8, 3, 3].
    rewrite(
        "wrong_shape.pth",
        [
            (b"conv2.conv.0.weight", b"convX.conv.0.weight"),
            (b"conv3.conv.0.weight", b"conv2.conv.0.weight"),
            (b"convX.conv.0.weight", b"conv3.conv.0.weight"),
        ],
    )
    # A NaN as the first value of storage 0 (conv1.conv.0.weight, float32): a model that
    # would answer NaN everywhere.
    nan = struct.pack("<f", float("nan"))
    rewrite("nan_weights.pth", [], lambda name, data: nan + data[4:] if name == "0" else data)
    # A pickled call to os.system beside the state dict (torch.load would run it): the
    # outer dict gets one more item before the pickle's STOP.
    call = b"X\x05\x00\x00\x00hookscposix\nsystem\nX\x1a\x00\x00\x00touch /tmp/pwned_by_pickle\x85Rs"
    rewrite("os_system.pth", [(b"us.", b"u" + call + b".")])


if __name__ == "__main__":
    main()
