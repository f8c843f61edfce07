"""Decodes every barcode in the given PGM images (as `pdftoppm -gray`
writes them) with zxing-cpp, an independent decoder, and prints one JSON
object per barcode: file, format, text (human-readable interpretation,
GS1 element strings in parentheses), symbology identifier, and the raw
bytes in hex. Used by daemon/tests/labels.rs; needs only `zxing-cpp`
(`pip install zxing-cpp`), not numpy or Pillow."""

import json
import sys

import zxingcpp


def read_pgm(path):
    with open(path, "rb") as f:
        data = f.read()
    fields = []
    i = 0
    while len(fields) < 4:
        while data[i : i + 1].isspace():
            i += 1
        if data[i : i + 1] == b"#":
            while data[i : i + 1] != b"\n":
                i += 1
            continue
        j = i
        while not data[j : j + 1].isspace():
            j += 1
        fields.append(data[i:j])
        i = j
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5" or maxval != 255:
        raise SystemExit(f"{path}: not an 8-bit binary PGM")
    pixels = data[i + 1 : i + 1 + width * height]
    return memoryview(pixels).cast("B", (height, width))


for path in sys.argv[1:]:
    image = read_pgm(path)
    for b in zxingcpp.read_barcodes(image):
        print(
            json.dumps(
                {
                    "file": path,
                    "format": str(b.format).split(".")[-1],
                    "text": b.text,
                    "symbology": b.symbology_identifier,
                    "bytes": bytes(b.bytes).hex(),
                }
            )
        )
