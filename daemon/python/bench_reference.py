#!/usr/bin/env python3
"""PyTorch eager references for `neural-style bench`, written from the paper's equations, not
from the Rust code: VGG19 features to relu5_1 with average pooling, content at relu4_2, style at
relu1_1..relu5_1 with Gram matrices normalised by M and w_l = 1/5, eq. 7 with
alpha = 1/(N*M) of the content layer, the image clamped to [0,1] inside the objective.

  evaluation    one forward + backward to the input, timed (random image, seeded weights)
  time-to-loss  torch.optim.LBFGS + strong Wolfe, fp32, NCHW, single scale, from a given start;
                (seconds, loss) after every evaluation, the final image written out
  graph-probe   (CUDA) one evaluation eager against a replayed CUDA graph of it, per size

Prints one JSON object.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torchvision

STYLE = [1, 6, 11, 20, 29]  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
CONTENT = 22  # relu4_2
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def build(device, dtype, channels_last, weights=None):
    feats = torchvision.models.vgg19(weights=None).features[: max(STYLE + [CONTENT]) + 1]
    if weights:
        from safetensors.torch import load_file

        state = {k.removeprefix("features."): v for k, v in load_file(weights).items()}
        feats.load_state_dict({k: v for k, v in state.items() if k in feats.state_dict()}, strict=True)
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


class Problem:
    """The objective for one content and one style image on one network."""

    def __init__(self, net, content, style, beta, dtype, channels_last, alpha=None):
        self.net, self.dtype, self.channels_last, self.beta = net, dtype, channels_last, beta
        dev = content.device
        self.mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
        with torch.no_grad():
            self.p = self.taps(content)[CONTENT]
            s = self.taps(style)
            self.targets = {i: gram(s[i]) for i in STYLE}
        self.alpha = alpha if alpha is not None else 1.0 / self.p.numel()

    def taps(self, image):
        out = {}
        x = ((image - self.mean) / self.std).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for i, m in enumerate(self.net):
            x = m(x)
            if i == CONTENT or i in STYLE:
                out[i] = x.float()
        return out

    def loss(self, x):
        f = self.taps(x.clamp(0, 1))
        content = 0.5 * ((f[CONTENT] - self.p) ** 2).sum()
        style = 0
        for i in STYLE:
            n = f[i].shape[1]
            style = style + ((gram(f[i]) - self.targets[i]) ** 2).sum() / (4 * n * n) / len(STYLE)
        return self.alpha * content + self.beta * style


def gram(f):
    _, n, h, w = f.shape
    f = f.reshape(n, h * w)
    return f @ f.t() / (h * w)


def evaluation(a):
    torch.manual_seed(0)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.bf16 else torch.float16 if a.fp16 else torch.float32
    net = build(dev, dtype, a.channels_last)
    g = torch.Generator().manual_seed(1)
    content, style, x = (torch.rand(1, 3, a.size, a.size, generator=g).to(dev) for _ in range(3))
    problem = Problem(net, content, style, 500.0, dtype, a.channels_last)

    def evaluate():
        xi = x.detach().requires_grad_(True)
        problem.loss(xi).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return xi.grad

    if a.cuda_graph:
        # the whole evaluation (forward, loss, backward) captured once and replayed: what a CUDA
        # graph would save of the launch cost (warm-up on a side stream first, as PyTorch asks)
        static_x = x.detach().clone().requires_grad_(True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                static_x.grad = None
                problem.loss(static_x).backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        static_x.grad = None
        with torch.cuda.graph(graph):
            problem.loss(static_x).backward()

        def evaluate():
            static_x.data.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            return static_x.grad

    for _ in range(a.warmup):
        evaluate()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - t0)
    return {"size": a.size, "median": statistics.median(times), "times": times, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "dtype": str(dtype), "channels_last": a.channels_last,
            "cuda_graph": a.cuda_graph}


def graph_probe(a):
    """Eager against CUDA-graph replay of one evaluation, per size, fp32 NCHW and bf16 NHWC."""
    rows = []
    for size in a.sizes:
        for bf16 in (False, True):
            row = {"size": size, "dtype": "bf16+nhwc" if bf16 else "fp32"}
            for graph in (False, True):
                e = argparse.Namespace(size=size, repeats=a.repeats, warmup=a.warmup, device="cuda", bf16=bf16,
                                       fp16=False, channels_last=bf16, cuda_graph=graph)
                row["graph" if graph else "eager"] = evaluation(e)["median"]
            row["graph_over_eager"] = row["graph"] / row["eager"]
            print(f"{size} px {row['dtype']}: eager {row['eager'] * 1e3:.2f} ms, graph {row['graph'] * 1e3:.2f} ms",
                  file=sys.stderr)
            rows.append(row)
    return {"rows": rows, "torch": torch.__version__, "device": torch.cuda.get_device_name()}


def time_to_loss(a):
    from safetensors.torch import load_file, save_file

    dev = torch.device(a.device)
    t = {k: v.to(dev) for k, v in load_file(a.input).items()}
    net = build(dev, torch.float32, False, a.weights)
    if dev.type == "cuda":
        # plain PyTorch at its best: cuDNN's fastest algorithms, found before the clock starts
        torch.backends.cudnn.benchmark = True
        warm = Problem(net, t["content"], t["style"], a.beta, torch.float32, False, a.alpha)
        for _ in range(3):
            xi = t["x0"].clone().requires_grad_(True)
            warm.loss(xi).backward()
        torch.cuda.synchronize()
    start = time.perf_counter()
    problem = Problem(net, t["content"], t["style"], a.beta, torch.float32, False, a.alpha)
    x = t["x0"].clone().requires_grad_(True)
    trace = []

    def closure():
        opt.zero_grad()
        loss = problem.loss(x)
        loss.backward()
        trace.append((time.perf_counter() - start, loss.item()))
        return loss

    # max_eval bounds evaluations (line-search trials included), as neural-style's --iterations
    opt = torch.optim.LBFGS([x], lr=1, max_iter=a.evals, max_eval=a.evals, history_size=a.history,
                            tolerance_grad=0, tolerance_change=0, line_search_fn="strong_wolfe")
    opt.step(closure)
    seconds = time.perf_counter() - start
    save_file({"x": x.detach().cpu().contiguous()}, a.out)
    return {"seconds": seconds, "evaluations": len(trace), "trace": trace, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(dev)}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluation")
    ev.add_argument("--size", type=int, required=True)
    ev.add_argument("--repeats", type=int, default=3)
    ev.add_argument("--warmup", type=int, default=1)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--bf16", action="store_true")
    ev.add_argument("--fp16", action="store_true")
    ev.add_argument("--channels-last", action="store_true")
    ev.add_argument("--cuda-graph", action="store_true", help="time replays of one captured evaluation")
    tl = sub.add_parser("time-to-loss")
    tl.add_argument("--weights", required=True)
    tl.add_argument("--input", required=True, help="safetensors with content, style, x0")
    tl.add_argument("--out", required=True, help="safetensors for the final image")
    tl.add_argument("--beta", type=float, required=True)
    tl.add_argument("--alpha", type=float, help="content weight (default 1/(N*M) of the content layer)")
    tl.add_argument("--evals", type=int, default=300)
    tl.add_argument("--history", type=int, default=100)
    tl.add_argument("--device", default="cpu")
    gp = sub.add_parser("graph-probe")
    gp.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[128, 256, 512])
    gp.add_argument("--repeats", type=int, default=20)
    gp.add_argument("--warmup", type=int, default=5)
    for p in (ev, tl, gp):
        p.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = {"evaluation": evaluation, "time-to-loss": time_to_loss, "graph-probe": graph_probe}[a.command]
    print(json.dumps(run(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
