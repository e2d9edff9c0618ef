"""Generate shapes_vqa: small JPEGs of coloured shapes, with questions only the image answers.

    python examples/make_shapes_vqa.py [--out data/shapes_vqa] [--train 8000] [--val 200] [--size 48] [--seed 0]

Each picture has 1-3 shapes (circle, square, triangle) in six colours on a white background,
each shape in its own quadrant, so "left/right" and "top/bottom" are never ambiguous. Colours
differ within a picture, so "the red one" names one shape. One question per picture, of four
kinds: colour ("What colour is the circle?"), shape ("What shape is the red one?"), count
("How many shapes are there?") and position ("Is the red shape on the left or the right?" /
"... at the top or the bottom?"); every answer is one word.

Writes, into --out: images/*.jpg, train.json and val.json in LLaMA-Factory's multimodal
sharegpt form (image paths relative to --out, which is the dataset_dir), dataset_info.json
registering shapes_train and shapes_val, and chance.json: the accuracy of a model that reads
the question but not the image.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 20), "purple": (130, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("colour", "shape", "count", "position")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUND = (255, 255, 255)


def sample_objects(rng: random.Random) -> list[dict]:
    """1-3 shapes, each in a different quadrant (row, col), colours all different."""
    count = rng.randint(1, 3)
    cells = rng.sample([(r, c) for r in (0, 1) for c in (0, 1)], count)
    colours = rng.sample(list(COLOURS), count)
    return [{"shape": rng.choice(SHAPES), "colour": colour, "row": row, "col": col}
            for (row, col), colour in zip(cells, colours)]


def draw(rng: random.Random, objects: list[dict], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    pen = ImageDraw.Draw(image)
    half = size / 2
    for o in objects:
        radius = half * rng.uniform(0.28, 0.4)
        slack = half / 2 - radius - 1  # keep the whole shape inside its quadrant
        cx = o["col"] * half + half / 2 + rng.uniform(-slack, slack)
        cy = o["row"] * half + half / 2 + rng.uniform(-slack, slack)
        fill = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif o["shape"] == "square":
            pen.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            pen.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)
    return image


def ask(rng: random.Random, objects: list[dict]) -> tuple[str, str, str]:
    """(kind, question, answer) about this scene."""
    shape_counts = Counter(o["shape"] for o in objects)
    while True:
        kind = rng.choice(KINDS)
        if kind == "colour":
            unique = [o for o in objects if shape_counts[o["shape"]] == 1]
            if not unique:
                continue  # every shape appears twice or more: "the circle" names nothing
            target = rng.choice(unique)
            return kind, f"What colour is the {target['shape']}?", target["colour"]
        target = rng.choice(objects)
        if kind == "shape":
            return kind, f"What shape is the {target['colour']} one?", target["shape"]
        if kind == "count":
            return kind, "How many shapes are there?", COUNT_WORDS[len(objects)]
        if rng.random() < 0.5:
            return kind, f"Is the {target['colour']} shape on the left or the right?", ("left", "right")[target["col"]]
        return kind, f"Is the {target['colour']} shape at the top or the bottom?", ("top", "bottom")[target["row"]]


def make_split(rng: random.Random, out: Path, split: str, n: int, size: int) -> list[dict]:
    rows = []
    for i in range(n):
        objects = sample_objects(rng)
        image = draw(rng, objects, size)
        kind, question, answer = ask(rng, objects)
        name = f"images/{split}_{i:05d}.jpg"
        image.save(out / name, quality=95)
        rows.append({"messages": [{"role": "user", "content": f"<image>{question}"},
                                  {"role": "assistant", "content": answer}],
                     "images": [name], "type": kind})
    return rows


def chance(val: list[dict], seed: int, simulated: int = 50_000) -> dict:
    """What a model that reads the question but not the image can reach: for each question
    text, always the answer most common for it. Those answers and their frequencies come from
    many simulated questions (no pictures drawn), so small groups in val do not inflate them:
    `accuracy` is the expected accuracy of that blind model, `on_val` what it scores on val."""
    rng = random.Random(seed + 1)  # a stream of its own: the pictures stay the same
    answers: dict[str, Counter] = defaultdict(Counter)
    kinds: dict[str, str] = {}
    for _ in range(simulated):
        kind, question, answer = ask(rng, sample_objects(rng))
        answers[question][answer] += 1
        kinds[question] = kind
    blind = {q: counts.most_common(1)[0][0] for q, counts in answers.items()}
    result = {}
    for kind in KINDS + ("overall",):
        asked = [q for q in answers if kind in ("overall", kinds[q])]
        total = sum(sum(answers[q].values()) for q in asked)
        expected = sum(answers[q].most_common(1)[0][1] for q in asked) / total
        rows = [r for r in val if kind in ("overall", r["type"])]
        hits = sum(blind.get(r["messages"][0]["content"].removeprefix("<image>")) == r["messages"][1]["content"]
                   for r in rows)
        result[kind] = {"accuracy": round(expected, 4), "on_val": round(hits / max(1, len(rows)), 4),
                        "val_samples": len(rows)}
    return result


def generate(out: str | Path, n_train: int = 8000, n_val: int = 200, size: int = 48, seed: int = 0) -> dict:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = make_split(rng, out, "train", n_train, size)
    val = make_split(rng, out, "val", n_val, size)
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    for name, rows in (("train.json", train), ("val.json", val)):
        (out / name).write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    info = {"shapes_train": {"file_name": "train.json", **entry}, "shapes_val": {"file_name": "val.json", **entry}}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    levels = chance(val, seed)
    (out / "chance.json").write_text(json.dumps(levels, indent=2) + "\n", encoding="utf-8")
    return levels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/shapes_vqa", help="folder to write (the dataset_dir)")
    parser.add_argument("--train", type=int, default=8000, help="training pictures")
    parser.add_argument("--val", type=int, default=200, help="validation pictures")
    parser.add_argument("--size", type=int, default=48, help="picture side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 16 or args.train < 1 or args.val < 1:
        parser.error("--size must be at least 16 and --train/--val at least 1")
    levels = generate(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} + {args.val} samples to {args.out}; chance accuracy (question only): "
          f"{levels['overall']['accuracy']:.3f} overall, "
          + ", ".join(f"{k} {levels[k]['accuracy']:.3f}" for k in KINDS))


if __name__ == "__main__":
    main()
