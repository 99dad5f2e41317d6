"""Feature: contrast (standard deviation of the pixels), 0..1.  Usage: contrast.py IMAGE OUT"""

import sys

from pgm import read_pgm

_, _, pixels = read_pgm(sys.argv[1])
mean = sum(pixels) / len(pixels)
std = (sum((p - mean) ** 2 for p in pixels) / len(pixels)) ** 0.5
with open(sys.argv[2], "w") as out:
    out.write(f"{std / 255:.4f}\n")
