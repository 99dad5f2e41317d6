"""Write N small, deterministic test images (binary PGM) of varying quality into a directory.

Usage: python3 make_images.py DIR [N]
"""

from __future__ import annotations

import os
import random
import sys

SIZE = 32
KINDS = ("good", "dark", "blurry", "flat", "overexposed")


def image(kind: str, rng: random.Random) -> list[int]:
    px = [rng.randrange(256) for _ in range(SIZE * SIZE)]
    if kind == "blurry":
        for _ in range(3):  # box blur, three passes
            px = [
                sum(
                    px[((y + dy) % SIZE) * SIZE + (x + dx) % SIZE]
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                )
                // 9
                for y in range(SIZE)
                for x in range(SIZE)
            ]
    elif kind == "dark":
        px = [p // 6 for p in px]
    elif kind == "flat":
        px = [120 + p // 16 for p in px]
    elif kind == "overexposed":
        px = [230 + p // 12 for p in px]
    return px


def main() -> None:
    out, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        rng = random.Random(i)
        kind = KINDS[i % len(KINDS)]
        with open(os.path.join(out, f"img{i:03d}.pgm"), "wb") as f:
            f.write(f"P5\n{SIZE} {SIZE}\n255\n".encode() + bytes(image(kind, rng)))


if __name__ == "__main__":
    main()
