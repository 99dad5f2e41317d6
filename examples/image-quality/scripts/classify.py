"""The classifier: a label from the three features of one image.
Usage: classify.py BRIGHTNESS CONTRAST SHARPNESS OUT"""

import sys


def value(path: str) -> float:
    with open(path) as f:
        return float(f.read())


brightness, contrast, sharpness = (value(p) for p in sys.argv[1:4])
if brightness < 0.25:
    label = "dark"
elif brightness > 0.8:
    label = "overexposed"
elif contrast < 0.04:
    label = "flat"
elif sharpness < 0.05:
    label = "blurry"
else:
    label = "good"
with open(sys.argv[4], "w") as out:
    out.write(f"{label} brightness={brightness} contrast={contrast} sharpness={sharpness}\n")
