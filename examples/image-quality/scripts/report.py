"""The summary: one line per image and a count per label.  Usage: report.py OUT LABEL_FILE..."""

import os
import sys
from collections import Counter

rows = []
for path in sys.argv[2:]:
    with open(path) as f:
        rows.append((os.path.splitext(os.path.basename(path))[0], f.read().split()[0]))
rows.sort()
counts = Counter(label for _, label in rows)
with open(sys.argv[1], "w") as out:
    for stem, label in rows:
        out.write(f"{stem} {label}\n")
    out.write("--\n")
    for label in sorted(counts):
        out.write(f"{label}: {counts[label]}\n")
