import torch, time, sys
dev = 'cuda'
torch.backends.cuda.matmul.allow_tf32 = False
def timeit(f, reps=200):
    for _ in range(10): f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps): f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6
def gtime(f, reps=200):
    # GPU time via a graph of 20 calls
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20): f()
    for _ in range(3): g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps // 20 + 1): g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / ((reps // 20 + 1) * 20) * 1e6
print("per-call µs (eager, incl. launch) | per-call µs GPU (20 calls in one graph)")
for px in (128, 256, 512):
    n = 3 * px * px
    for rows in (12, 202):
        held = torch.randn(rows, n, device=dev)
        cols3 = torch.randn(3, n, device=dev)
        colsT = cols3.t()
        c = torch.randn(rows, device=dev)
        g = torch.randn(n, device=dev)
        def mm(): return held.matmul(colsT)
        def mmT(): return cols3.matmul(held.t())
        res = {}
        res['matmul [r,n]x[n,3]'] = (timeit(mm), gtime(mm))
        res['matmul [3,n]x[n,r]'] = (timeit(mmT), gtime(mmT))
        for B in (16, 64, 256):
            if n % B: continue
            L = n // B
            hb = held.view(rows, B, L).permute(1, 0, 2)
            cb = colsT.contiguous().view(B, L, 3)
            def sk(): return torch.bmm(hb, cb).sum(0)
            res[f'splitK B={B}'] = (timeit(sk), gtime(sk))
        def ew(): return (held.unsqueeze(0) * cols3.unsqueeze(1)).sum(-1)
        if rows * n * 3 * 4 < 2e9: res['broadcast-sum'] = (timeit(ew), gtime(ew))
        def bd(): return torch.baddbmm(g.view(1,1,n), c.view(1,1,-1), held.unsqueeze(0), beta=-0.5, alpha=1.0)
        res['baddbmm direction'] = (timeit(bd), gtime(bd))
        def mv(): return held.t().mv(c)
        res['mv direction'] = (timeit(mv), gtime(mv))
        for k, (a, b) in res.items():
            print(f"{px:4d}px rows {rows:3d} {k:24s} {a:8.1f} {b:8.1f}")
    x = torch.randn(n, device=dev); y = torch.randn(n, device=dev); out = torch.empty(n, device=dev)
    tiny = {'copy_': lambda: out.copy_(x), 'add': lambda: x + y, 'mul scalar': lambda: x * 0.5,
            'dot': lambda: x.dot(y), 'norm inf': lambda: torch.linalg.vector_norm(x, float('inf')), 'cat 3': lambda: torch.cat([x, y, x])}
    for k, f in tiny.items():
        print(f"{px:4d}px {k:24s} {timeit(f):8.1f} {gtime(f):8.1f}")
pin = torch.empty(256, pin_memory=True); dst = torch.empty(256, device=dev)
print("H2D 256 floats non_blocking copy_", timeit(lambda: dst.copy_(pin, non_blocking=True)))
r = torch.randn(600, device=dev)
print("D2H read of 600 floats (.cpu())", timeit(lambda: r.cpu()))
print("empty sync", timeit(lambda: torch.cuda.synchronize()))
