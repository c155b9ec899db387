#!/usr/bin/env python3
"""PyTorch reference for `neural-style bench --time-to-loss`: the paper's objective (eq. 7 with
Gram matrices normalised by M, content at relu4_2, style at relu1_1..relu5_1, w_l = 1/5, average
pooling, the image clamped to [0,1] inside the objective) minimised by torch.optim.LBFGS with the
strong-Wolfe line search, fp32, NCHW, single scale, from the start image it is given. Written from
the equations, not from the Rust code. Records (seconds, loss) after every evaluation, writes the
final image, prints one JSON object.
"""
import argparse
import json
import time

import torch
import torchvision
from safetensors.torch import load_file, save_file

CONTENT = [22]  # relu4_2
STYLE = [1, 6, 11, 20, 29]  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def network(weights):
    feats = torchvision.models.vgg19(weights=None).features[: max(STYLE + CONTENT) + 1]
    state = {k.removeprefix("features."): v for k, v in load_file(weights).items()}
    feats.load_state_dict({k: v for k, v in state.items() if k in feats.state_dict()}, strict=True)
    layers = []
    for m in feats:
        if isinstance(m, torch.nn.MaxPool2d):
            m = torch.nn.AvgPool2d(2, 2)
        if isinstance(m, torch.nn.ReLU):
            m = torch.nn.ReLU(inplace=False)
        layers.append(m)
    net = torch.nn.Sequential(*layers).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def features(net, x):
    out = {}
    x = (x - MEAN) / STD
    for i, m in enumerate(net):
        x = m(x)
        if i in CONTENT or i in STYLE:
            out[i] = x
    return out


def gram(f):
    _, n, h, w = f.shape
    f = f.reshape(n, h * w)
    return f @ f.t() / (h * w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input", required=True, help="safetensors with content, style, x0")
    ap.add_argument("--out", required=True, help="safetensors for the final image")
    ap.add_argument("--beta", type=float, required=True)
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t = load_file(a.input)
    net = network(a.weights)
    start = time.perf_counter()
    with torch.no_grad():
        p = features(net, t["content"])[CONTENT[0]]
        fs = features(net, t["style"])
        targets = {i: gram(fs[i]) for i in STYLE}
    alpha = 1.0 / p.numel()
    x = t["x0"].clone().requires_grad_(True)
    trace = []

    def closure():
        opt.zero_grad()
        f = features(net, x.clamp(0, 1))
        content = 0.5 * ((f[CONTENT[0]] - p) ** 2).sum()
        style = 0
        for i in STYLE:
            n = f[i].shape[1]
            style = style + ((gram(f[i]) - targets[i]) ** 2).sum() / (4 * n * n) / len(STYLE)
        loss = alpha * content + a.beta * style
        loss.backward()
        trace.append((time.perf_counter() - start, loss.item()))
        return loss

    # max_eval bounds evaluations (line-search trials included), as neural-style's --iterations
    opt = torch.optim.LBFGS([x], lr=1, max_iter=a.evals, max_eval=a.evals, history_size=a.history,
                            tolerance_grad=0, tolerance_change=0, line_search_fn="strong_wolfe")
    opt.step(closure)
    seconds = time.perf_counter() - start
    save_file({"x": x.detach().contiguous()}, a.out)
    print(json.dumps({"seconds": seconds, "evaluations": len(trace), "trace": trace,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
