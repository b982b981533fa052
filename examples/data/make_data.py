#!/usr/bin/env python3
"""Writes the examples' two tiny image folders (32×32 PNGs, seeded; Pillow):

- `shapes/{train,test}/<shape>/NN.png`: 5 classes (circle, cross, ring, square, triangle), any colour;
- `colors/{train,test}/<colour>/NN.png`: 3 classes (blue, green, red), any shape.

8 training and 4 test images per class. `python3 examples/data/make_data.py` re-creates them.
"""
import os
import random

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ["circle", "cross", "ring", "square", "triangle"]
COLORS = {"blue": (40, 60, 220), "green": (40, 180, 60), "red": (220, 40, 40)}


def draw(shape, color, rng):
    im = Image.new("RGB", (32, 32), tuple(rng.randint(0, 60) for _ in range(3)))
    d = ImageDraw.Draw(im)
    r = rng.randint(7, 11)
    cx, cy = rng.randint(r + 1, 31 - r), rng.randint(r + 1, 31 - r)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "ring":
        d.ellipse(box, outline=color, width=3)
    elif shape == "square":
        d.rectangle(box, fill=color)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        d.rectangle([cx - r, cy - 2, cx + r, cy + 2], fill=color)
        d.rectangle([cx - 2, cy - r, cx + 2, cy + r], fill=color)
    return im


def main():
    rng = random.Random(3407)
    for task, classes in [("shapes", SHAPES), ("colors", list(COLORS))]:
        for split, n in [("train", 8), ("test", 4)]:
            for c in classes:
                d = os.path.join(HERE, task, split, c)
                os.makedirs(d, exist_ok=True)
                for i in range(n):
                    shape = c if task == "shapes" else rng.choice(SHAPES)
                    color = COLORS[c] if task == "colors" else tuple(rng.randint(90, 255) for _ in range(3))
                    draw(shape, color, rng).save(os.path.join(d, f"{i:02d}.png"), optimize=True)


if __name__ == "__main__":
    main()
