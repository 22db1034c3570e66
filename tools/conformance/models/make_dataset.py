#!/usr/bin/env python3
"""The conformance dataset, as the platform would send it.

Writes media files only; captions travel in the platform's dataset document
(see tools/conformance/dataset.ts), and the worker's dataset fetcher writes the
caption files the engines read, exactly as in production.

  img_1..img_5.png   128x128 pictures (flat colour, a disc that moves), small
                     enough for a CPU step, a multiple of every bucket step
  ctl_1..ctl_5.png   their control images for edit models (Kontext `concept`
                     mode): the same scene before the edit, a grey disc where
                     the target's is yellow; same size as the targets. The
                     platform pairs them by the target's download name
                     (`controlImages[].sourceFilename`, tools/conformance/cases.ts)
  clip_1, clip_2.mp4 two 3-second H.264 clips at 30 fps (90 frames), 128x128:
                     musubi resamples them to WAN's 16 fps and cuts clips

Runs inside the musubi-tuner image (Pillow, numpy and PyAV with its bundled
ffmpeg are there): no host packages needed.

Usage: make_dataset.py <out-dir>
"""
import os
import sys

import av
import numpy as np
from PIL import Image, ImageDraw

SIZE = 128


def picture(i: int, disc=(250, 200, 20)) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (30 + 40 * i, 90, 210 - 35 * i))
    d = ImageDraw.Draw(im)
    d.ellipse((16 + 12 * i, 24, 80 + 12 * i, 88), fill=disc)
    d.rectangle((8, 100, 120, 120), fill=(20, 20, 20))
    return im


def clip(path: str, seed: int, seconds: int = 3, fps: int = 30) -> None:
    container = av.open(path, mode="w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width = SIZE
    stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    frames = seconds * fps
    for t in range(frames):
        img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        img[:, :] = (40, 60 + seed * 40, 120)
        x = int((SIZE - 40) * t / (frames - 1))
        img[44:84, x : x + 40] = (255, 220, 0)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for i in range(1, 6):
        picture(i).save(os.path.join(out, f"img_{i}.png"))
        picture(i, disc=(128, 128, 128)).save(os.path.join(out, f"ctl_{i}.png"))
    for i in (1, 2):
        clip(os.path.join(out, f"clip_{i}.mp4"), seed=i)
    print("dataset:", ", ".join(sorted(os.listdir(out))))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_dataset.py <out-dir>")
    main(sys.argv[1])
