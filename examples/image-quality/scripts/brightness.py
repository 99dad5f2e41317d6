"""Feature: mean brightness of an image, 0..1.  Usage: brightness.py IMAGE OUT"""

import sys

from pgm import read_pgm

_, _, pixels = read_pgm(sys.argv[1])
with open(sys.argv[2], "w") as out:
    out.write(f"{sum(pixels) / len(pixels) / 255:.4f}\n")
