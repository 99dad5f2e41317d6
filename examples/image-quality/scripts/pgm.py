"""Read a binary PGM (P5) image: the tiny format the image-quality example uses."""

from __future__ import annotations


def read_pgm(path: str) -> tuple[int, int, list[int]]:
    """(width, height, pixels row by row, 0..255)."""
    with open(path, "rb") as f:
        data = f.read()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P5":
        raise ValueError(f"{path}: not a binary PGM image")
    width, height, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    pixels = data[pos + 1 : pos + 1 + width * height]
    scale = 255 / maxval
    return width, height, [round(p * scale) for p in pixels]
