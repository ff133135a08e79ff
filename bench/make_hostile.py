"""Makes the hostile images of bench/hardening.sh (deterministic; a few MB in all):
shapes that used to cost gigabytes, decompression bombs, headers that lie.

Usage: python make_hostile.py OUT_DIR
"""
import io
import os
import struct
import sys
import zlib

from PIL import Image


def png(path, w, h, color_type, depth, row, filt=0):
    """A PNG of h identical rows, compressed row by row (never all in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    idat = bytearray()
    line = bytes([filt]) + row
    for _ in range(h):
        idat += z.compress(line)
    idat += z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", bytes(idat)))
        f.write(chunk(b"IEND", b""))


def tiff_rgba16(path, w, h):
    """Uncompressed 16-bit RGBA TIFF whose strips (one row each) all point at one zero row."""
    row = w * 8
    out = bytearray(b"II*\0" + b"\0\0\0\0" + bytes(row))
    offsets_at = len(out)
    out += struct.pack(f"<{h}I", *([8] * h))
    counts_at = len(out)
    out += struct.pack(f"<{h}I", *([row] * h))
    bits_at = len(out)
    out += struct.pack("<4H", 16, 16, 16, 16)
    if len(out) % 2:
        out += b"\0"
    struct.pack_into("<I", out, 4, len(out))
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 4, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, h, offsets_at), (277, 3, 1, 4), (278, 4, 1, 1), (279, 4, h, counts_at),
            (284, 3, 1, 1), (338, 3, 1, 2)]
    out += struct.pack("<H", len(tags))
    for tag, ty, count, value in tags:
        out += struct.pack("<HHII", tag, ty, count, value)
    out += struct.pack("<I", 0)
    open(path, "wb").write(out)


def jpeg_bytes(im, **kw):
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def patch_sof(data, w, h):
    data = bytearray(data)
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, h, w)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)
    made = []

    def make(name, fn):
        if not os.path.exists(p(name)):
            fn(p(name) + ".tmp")
            os.replace(p(name) + ".tmp", p(name))
        made.append(name)

    # Thin: 12000x1 used to be resized to 3,072,000x256 (2.4 GB).
    make("thin-12000x1.png", lambda f: png(f, 12000, 1, 2, 8, bytes(range(256)) * 140 + bytes(36000 - 35840)))
    make("thin-1x12000.png", lambda f: png(f, 1, 12000, 2, 8, b"\x40\x80\xc0"))
    # Bombs: a 10000x10000 RGBA 16-bit PNG (800 MB of pixels), and an RGB one.
    make("bomb-rgba16-10000.png", lambda f: png(f, 10000, 10000, 6, 16, bytes(80000)))
    make("bomb-rgb8-10000.png", lambda f: png(f, 10000, 10000, 2, 8, bytes((x // 40) % 256 for x in range(30000)), filt=2))
    make("bomb-rgba16-10000.tif", lambda f: tiff_rgba16(f, 10000, 10000))
    # A real 96 MP JPEG (one colour; every block still has to be decoded).
    make("huge-12000x8000.jpg", lambda f: Image.new("RGB", (12000, 8000), (90, 140, 200)).save(f, "JPEG", quality=90))
    # Lying headers: data for 16x16 (JPEG) or 16 rows (PNG), headers say 10000 x 10000.
    small = Image.frombytes("RGB", (16, 16), bytes((i * 37 + i // 48 * 11) % 256 for i in range(768)))
    make("liar-10000.jpg", lambda f: open(f, "wb").write(patch_sof(jpeg_bytes(small, quality=90), 10000, 10000)))

    def png_liar(f):
        b = io.BytesIO()
        small.save(b, "PNG")
        d = bytearray(b.getvalue())
        struct.pack_into(">I", d, 20, 10000)
        struct.pack_into(">I", d, 29, zlib.crc32(bytes(d[12:29])))
        open(f, "wb").write(d)
    make("liar-16x10000.png", png_liar)
    for name in made:
        print(f"{name}\t{os.path.getsize(p(name))} bytes")


if __name__ == "__main__":
    main()
