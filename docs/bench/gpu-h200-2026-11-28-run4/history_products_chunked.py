import torch, time
dev = 'cuda'
torch.backends.cuda.matmul.allow_tf32 = False
def gtime(f, reps=200):
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
print("GPU µs per product [rows, n] x [n, 3] (n = 3·px², columns as the engine makes them: [3, n] transposed)")
for px in (128, 256, 512, 1024):
    n = 3 * px * px
    for rows in (12, 202):
        held = torch.randn(rows, n, device=dev)
        cols = torch.randn(3, n, device=dev)
        ref = (held.double() @ cols.double().t())
        out = [f"{px:4d}px rows {rows:3d}: plain {gtime(lambda: held.matmul(cols.t())):7.1f}"]
        for L in (128, 256, 512, 1024, 2048, 4096):
            B = n // L
            if B < 2: continue
            main = B * L
            a = held[:, :main].view(rows, B, L).permute(1, 0, 2)
            b = cols.t()[:main].view(B, L, 3)
            def f():
                s = torch.bmm(a, b).sum(0)
                if main < n: s = s + held[:, main:] @ cols.t()[main:]
                return s
            err = ((f().double() - ref).abs().max() / ref.abs().max()).item()
            out.append(f"L={L} {gtime(f):7.1f} ({err:.0e})")
        print("  ".join(out), flush=True)
