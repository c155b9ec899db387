#!/usr/bin/env python3
"""Plots `neural-style bench --suite --json` output as small multiples, one panel per case: the
objective divided by PyTorch's 300-evaluation loss, against seconds. Black: PyTorch's
torch.optim.LBFGS per evaluation. Coloured dots joined by lines: neural-style's final f32
objective at each budget (0.1T, 0.2T, 0.35T) for the default schedule, single scale and
multi-scale. Usage: plot_suite.py DATA.json OUT.png
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"default": "tab:red", "single": "tab:blue", "multi": "tab:green"}


def main():
    v = json.load(open(sys.argv[1]))
    cases = v["cases"]
    cols = 4
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), dpi=110, squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, c in zip(axes.flat, cases):
        ref = c["reference"]
        final = ref["final_loss"]
        t = ref["seconds"]
        tr = [p for p in ref["trace"] if p[1] <= 20 * final]
        ax.plot([p[0] for p in tr], [p[1] / final for p in tr], color="black", linewidth=0.8)
        for variant, color in COLORS.items():
            runs = [r for r in c["runs"] if r["variant"] == variant]
            ax.plot([r["seconds"] for r in runs], [r["loss_ratio"] for r in runs], color=color, marker="o",
                    markersize=3, linewidth=0.9, linestyle="--" if variant != "default" else "-",
                    label=variant if c is cases[0] else None)
        for f in v["budgets"]:
            ax.axvline(f * t, color="grey", linewidth=0.4, linestyle=":")
        ax.axvline(v["target_budget"] * t, color="grey", linewidth=0.8, linestyle="-")
        ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_yscale("log")
        ax.set_xlim(0, t * 1.02)
        ax.set_title(c["name"], fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(True, which="both", alpha=0.25)
    pre = "pretrained" if v["pretrained"] else "NOT pretrained (seeded random weights)"
    fig.suptitle(f"Schedule suite: objective ÷ PyTorch's {v['reference_evals']}-evaluation loss vs seconds; "
                 f"neural-style {v['precision']} on {v['device']}, {v['threads']} threads, {pre}", fontsize=8)
    fig.legend(loc="lower right", fontsize=7, title="neural-style at 0.1/0.2/0.35 T", title_fontsize=7)
    fig.text(0.01, 0.005, "black: PyTorch torch.optim.LBFGS (fp32, strong Wolfe) per evaluation; "
             "solid grey line: the budget by which the default should reach PyTorch's loss", fontsize=6)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
