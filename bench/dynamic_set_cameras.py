#!/usr/bin/python3
"""Which camera SpecPrune's V_dynamic draws from, on a simulator episode's frames.

Usage:
  build/bin/specprune_sim_demo --suite=long --seed=3000001 --fixed_tasks=10 --out=DIR --every=1
  /usr/bin/python3 bench/dynamic_set_cameras.py DIR [--k 10] [--tau 0.99] [--chunk 8]

Takes the frame of every chunk-th step (one per forward pass, as EpisodeState::frames does) and,
per pass, compares each 8x8 patch with the same patch T passes earlier by cosine similarity of the
[0, 1] pixels (kernels' patch_cosine_similarity). T is the oldest frame the server keeps (at most
11 passes): the history formula's value at rest; faster motion gives a smaller T. Prints, per
camera, the share of patches below tau, and how many of the k lowest-similarity patches below tau
(V_dynamic) are wrist-camera patches. Numpy only; reads the demo's 8-bit RGB PNGs itself.
"""
import argparse
import glob
import os
import struct
import zlib

import numpy as np


def read_png(path):
    data, raw_idat, width, height = open(path, "rb").read(), b"", 0, 0
    i = 8
    while i < len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        kind, chunk = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        i += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            if depth != 8 or colour != 2:
                raise ValueError(f"{path}: only 8-bit RGB PNGs are supported")
        elif kind == b"IDAT":
            raw_idat += chunk
    raw, stride = zlib.decompress(raw_idat), width * 3
    out, prev = np.zeros((height, stride), np.int32), np.zeros(stride, np.int32)
    for y in range(height):
        start = y * (stride + 1)
        filt = raw[start]
        line = np.frombuffer(raw[start + 1:start + 1 + stride], np.uint8).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if filt == 0:
                p = 0
            elif filt == 1:
                p = a
            elif filt == 2:
                p = b
            elif filt == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 255
        out[y], prev = cur, cur
    return out.reshape(height, width, 3) / 255.0


def patches(img, size=8):
    h, w, _ = img.shape
    return img.reshape(h // size, size, w // size, size, 3).transpose(0, 2, 1, 3, 4).reshape(
        -1, size * size * 3)


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--k", type=int, default=10, help="|V_dynamic| (tiny, coarse mode: 5 x 1.9)")
    ap.add_argument("--tau", type=float, default=0.99)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--history", type=int, default=11)
    args = ap.parse_args()
    steps = len(glob.glob(os.path.join(args.dir, "main_*.png")))
    passes = list(range(0, steps, args.chunk))
    frames = {cam: [patches(read_png(os.path.join(args.dir, f"{cam}_{p:04d}.png"))) for p in passes]
              for cam in ("main", "wrist")}
    per_camera = frames["main"][0].shape[0]
    shares = {"main": [], "wrist": []}
    wrist_in_set = []
    for k in range(1, len(passes)):
        t = min(k, args.history)
        sims = {cam: cosine(frames[cam][k], frames[cam][k - t]) for cam in frames}
        for cam in frames:
            shares[cam].append(float((sims[cam] < args.tau).mean()))
        both = np.concatenate([sims["main"], sims["wrist"]])
        chosen = np.argsort(both, kind="stable")[:args.k]
        chosen = chosen[both[chosen] < args.tau]
        wrist_in_set.append(f"{int((chosen >= per_camera).sum())}/{len(chosen)}")
    for cam in ("main", "wrist"):
        print(f"{cam}: share of patches below tau per pass: " +
              " ".join(f"{s:.2f}" for s in shares[cam]))
    print("wrist patches in V_dynamic per pass: " + " ".join(wrist_in_set))


if __name__ == "__main__":
    main()
