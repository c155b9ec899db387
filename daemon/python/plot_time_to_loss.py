#!/usr/bin/env python3
"""Plots `neural-style bench --time-to-loss --json` output: loss against seconds for PyTorch and
for each neural-style budget (per-evaluation losses at each scale, bf16 where that is the default,
and the final f32 objective at full size as a marker). Usage: plot_time_to_loss.py DATA.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    v = json.load(open(sys.argv[1]))
    ref = v["reference"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    t, loss = zip(*ref["trace"])
    ax.plot(t, loss, color="black", label=f"PyTorch {ref['torch']} fp32, L-BFGS, {ref['evaluations']} evaluations")
    ax.axhline(ref["final_loss"], color="black", linestyle=":", linewidth=0.8)
    for r, color in zip(v["runs"], ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]):
        tr = r["trace"]
        ax.plot([p[0] for p in tr], [p[1] for p in tr], color=color, linewidth=0.9,
                label=f"neural-style, --max-seconds {r['seconds']:.0f} ({r['budget_fraction']}× PyTorch's time)")
        ax.plot([r["seconds"]], [r["final_loss"]], marker="o", color=color)
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("objective (eq. 7)")
    w, h = v["size"]
    pre = "pretrained" if v["pretrained"] else "NOT pretrained (seeded random weights)"
    ax.set_title(f"Time to loss at {w}×{h}, {v['device']}, {v['threads']} threads, {pre}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.01, "lines: loss per evaluation at the scale being optimised; dots: final f32 objective at "
             "full size, scored by the same code for both", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
