"""Feature: sharpness (mean absolute difference of neighbouring pixels), 0..1.
Usage: sharpness.py IMAGE OUT"""

import sys

from pgm import read_pgm

width, height, px = read_pgm(sys.argv[1])
diffs = [
    abs(px[y * width + x] - px[y * width + x + 1]) for y in range(height) for x in range(width - 1)
]
diffs += [
    abs(px[y * width + x] - px[(y + 1) * width + x])
    for y in range(height - 1)
    for x in range(width)
]
with open(sys.argv[2], "w") as out:
    out.write(f"{sum(diffs) / len(diffs) / 255:.4f}\n")
