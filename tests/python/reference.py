#!/usr/bin/env python3
"""Independent PyTorch/torchvision reference computations for neural-style's tests.

Every subcommand reads tensors from a safetensors file written by the Rust test and writes its
results to another. Nothing here imports or mirrors the Rust code: the network is torchvision's
`vgg19().features` (ReLUs made non-inplace so taps survive), the losses are written out from the
paper's equations.

  activations  VGG19 activations at every ReLU tap for an image in [0,1]
  losses       eq. 1, 3, 4, 5, 7 in float64 for a content, a style and an image
  lbfgs        torch.optim.LBFGS on the style-transfer objective (float32) from a given start
  adam         torch.optim.Adam on the same objective, the same way
"""
import argparse
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

RELUS = {}
_i, _names = 0, []
for _b, _n in enumerate([2, 2, 4, 4, 4]):
    for _c in range(_n):
        RELUS[f"relu{_b + 1}_{_c + 1}"] = _i + 1
        _i += 2
    _i += 1
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def network(weights, pooling, dtype):
    feats = torchvision.models.vgg19(weights=None).features
    state = load_file(weights)
    feats.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    layers = []
    for m in feats:
        if isinstance(m, torch.nn.ReLU):
            m = torch.nn.ReLU(inplace=False)
        if isinstance(m, torch.nn.MaxPool2d) and pooling == "avg":
            m = torch.nn.AvgPool2d(2, 2)
        layers.append(m)
    net = torch.nn.Sequential(*layers).to(dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def normalise(x):
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def run(net, x, wanted):
    """Activations after the layers with the given indices."""
    out, deepest = {}, max(wanted)
    for i, m in enumerate(net):
        x = m(x)
        if i in wanted:
            out[i] = x
        if i == deepest:
            break
    return out


def objective(net, x, content_layers, style_layers, p, a, alpha, beta):
    """eq. 7 from eq. 1 (content), eq. 3-5 (style) with Gram matrices normalised by M."""
    f = run(net, normalise(x.clamp(0, 1)), set(content_layers) | set(style_layers))
    l_content = sum(0.5 * ((f[l] - p[l]) ** 2).sum() for l in content_layers)
    l_style = 0
    for l in style_layers:
        _, n, h, w = f[l].shape
        m = h * w
        F = f[l].reshape(n, m)
        G = F @ F.T  # eq. 3
        e = ((G / m - a[l]) ** 2).sum() / (4 * n * n)  # eq. 4 (A already divided by its M)
        l_style = l_style + e / len(style_layers)  # eq. 5, w_l = 1/|S|
    return alpha * l_content + beta * l_style, l_content, l_style


def targets(net, content, style, content_layers, style_layers):
    with torch.no_grad():
        p = run(net, normalise(content), set(content_layers))
        fs = run(net, normalise(style), set(style_layers))
        a = {}
        for l in style_layers:
            _, n, h, w = fs[l].shape
            F = fs[l].reshape(n, h * w)
            a[l] = F @ F.T / (h * w)
    return p, a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["activations", "losses", "lbfgs", "adam"])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pooling", default="avg", choices=["avg", "max"])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--evals", type=int, default=20)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    inp = load_file(a.input)
    cl = [RELUS["relu4_2"]]
    sl = [RELUS[n] for n in ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]]

    if a.command == "activations":
        net = network(a.weights, a.pooling, torch.float32)
        with torch.no_grad():
            acts = run(net, normalise(inp["x"]), set(RELUS.values()))
        save_file({name: acts[i].contiguous() for name, i in RELUS.items()}, a.out)
    elif a.command == "losses":
        net = network(a.weights, a.pooling, torch.float64)
        c, s, x = (inp[k].double() for k in ("content", "style", "x"))
        p, t = targets(net, c, s, cl, sl)
        x.requires_grad_(True)
        total, lc, ls = objective(net, x, cl, sl, p, t, a.alpha, a.beta)
        total.backward()  # autograd through the equations, in float64
        save_file({"content": lc.detach().reshape(1), "style": ls.detach().reshape(1),
                   "total": total.detach().reshape(1), "grad": x.grad.contiguous()}, a.out)
    elif a.command == "adam":
        net = network(a.weights, a.pooling, torch.float32)
        p, t = targets(net, inp["content"], inp["style"], cl, sl)
        x = inp["x"].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=a.lr)
        trace = []
        for i in range(a.evals):  # a step after every evaluation but the last
            opt.zero_grad()
            loss = objective(net, x, cl, sl, p, t, a.alpha, a.beta)[0]
            loss.backward()
            trace.append(loss.item())
            if i + 1 < a.evals:
                opt.step()
        save_file({"trace": torch.tensor(trace, dtype=torch.float64), "x": x.detach().contiguous()}, a.out)
    else:
        net = network(a.weights, a.pooling, torch.float32)
        p, t = targets(net, inp["content"], inp["style"], cl, sl)
        x = inp["x"].clone().requires_grad_(True)
        evals = [0]
        trace = []

        def closure():
            opt.zero_grad()
            loss = objective(net, x, cl, sl, p, t, a.alpha, a.beta)[0]
            loss.backward()
            evals[0] += 1
            trace.append(loss.item())
            return loss

        # torch evaluates before each of max_iter updates except after the last one, so
        # max_iter = evals - 1 updates plus one closing evaluation = `evals` evaluations.
        opt = torch.optim.LBFGS([x], lr=1, max_iter=a.evals - 1, max_eval=10 * a.evals,
                                history_size=a.history, line_search_fn=None)
        opt.step(closure)
        with torch.no_grad():
            final = objective(net, x, cl, sl, p, t, a.alpha, a.beta)[0]
        evals[0] += 1
        trace.append(final.item())
        save_file({"final": final.reshape(1).double(), "evals": torch.tensor([evals[0]]),
                   "trace": torch.tensor(trace, dtype=torch.float64), "x": x.detach().contiguous()}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
