"""Write the demo videos examples/video_vae.yaml trains on (bouncing, colour-shifting shapes).

    python examples/make_demo_videos.py                # data/demo_videos/{train,val}
    python examples/make_demo_videos.py --out DIR --train 64 --val 8 --frames 24 --size 64
"""
from __future__ import annotations

import argparse

from ember.tasks.video_vae.synth import write_demo_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo_videos")
    parser.add_argument("--train", type=int, default=64, help="training videos")
    parser.add_argument("--val", type=int, default=8, help="held-out validation videos (another seed)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--codec", default="libx264", help="any PyAV encoder, e.g. libx264 or mpeg4")
    opts = parser.parse_args()
    write_demo_videos(f"{opts.out}/train", opts.train, opts.frames, opts.size, seed=0, codec=opts.codec)
    write_demo_videos(f"{opts.out}/val", opts.val, opts.frames, opts.size, seed=1, codec=opts.codec)
    print(f"wrote {opts.train} training and {opts.val} validation videos to {opts.out}")


if __name__ == "__main__":
    main()
