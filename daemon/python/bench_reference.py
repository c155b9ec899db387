#!/usr/bin/env python3
"""PyTorch eager reference for `neural-style bench`: the same objective (VGG19 features to
relu5_1, average pooling, content at relu4_2, five normalised Grams, eq. 7) forward + backward to
the input, timed. Prints one JSON object."""
import argparse
import json
import statistics
import sys
import time

import torch
import torchvision

STYLE = [1, 6, 11, 20, 29]
CONTENT = [22]


def build(device, dtype, channels_last):
    torch.manual_seed(0)
    feats = torchvision.models.vgg19(weights=None).features[:30]
    layers = []
    for m in feats:
        if isinstance(m, torch.nn.MaxPool2d):
            m = torch.nn.AvgPool2d(2, 2)
        if isinstance(m, torch.nn.ReLU):
            m = torch.nn.ReLU(inplace=False)
        layers.append(m)
    net = torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def taps(net, x, idx, dtype, channels_last):
    out = {}
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for i, m in enumerate(net):
        x = m(x)
        if i in idx:
            out[i] = x.float()
    return out


def gram(f):
    _, n, h, w = f.shape
    f = f.reshape(n, h * w)
    return f @ f.t() / (h * w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.bf16 else torch.float16 if a.fp16 else torch.float32
    net = build(dev, dtype, a.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, a.size, a.size, generator=g).to(dev)
    style = torch.rand(1, 3, a.size, a.size, generator=g).to(dev)
    x = torch.rand(1, 3, a.size, a.size, generator=g).to(dev)
    idx = set(STYLE + CONTENT)
    with torch.no_grad():
        p = taps(net, (content - mean) / std, idx, dtype, a.channels_last)[22]
        s = taps(net, (style - mean) / std, idx, dtype, a.channels_last)
        targets = [gram(s[i]) for i in STYLE]
    alpha = 1.0 / p.numel()

    def evaluate():
        xi = x.detach().requires_grad_(True)
        f = taps(net, (xi.clamp(0, 1) - mean) / std, idx, dtype, a.channels_last)
        lc = 0.5 * (f[22] - p).pow(2).sum()
        ls = sum(((gram(f[i]) - t).pow(2).sum() / (4 * t.shape[0] ** 2)) / 5 for i, t in zip(STYLE, targets))
        total = alpha * lc + 500.0 * ls
        total.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return xi.grad

    for _ in range(a.warmup):
        evaluate()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"size": a.size, "median": statistics.median(times), "times": times,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "dtype": str(dtype), "channels_last": a.channels_last}))


if __name__ == "__main__":
    sys.exit(main())
