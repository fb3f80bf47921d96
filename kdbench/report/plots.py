"""The leaderboard's plots (matplotlib, Agg): gain over vanilla, accuracy vs student cost, curves."""
from __future__ import annotations

import io
import re

from kdbench.experiment.schema import VANILLA

from .frame import Setting
from .tables import _baseline, _in_order, display

SLUG_MAX = 80  # a file name holds two slugs and a prefix, within the 255 bytes every file system allows


def _slug(s: str) -> str:
    """``s`` as a file-name part: safe characters only, and a long one cut and made unique by its digest (a
    record's dataset or pair name of any length must not make a figure's file name too long to write)."""
    import hashlib

    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", s)
    if len(out) > SLUG_MAX:
        out = f"{out[:SLUG_MAX - 11]}-{hashlib.sha256(s.encode()).hexdigest()[:10]}"
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(agg, df, setting: Setting) -> dict[str, bytes]:
    """The setting's figures. Every text in them may come from records (pair, dataset and method names,
    hyper-parameter values): mathtext is off, so a ``$`` is a dollar sign, never markup or a crash."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False}):
        return _plots(agg, df, setting)


def _plots(agg, df, setting: Setting) -> dict[str, bytes]:
    import matplotlib.pyplot as plt

    a = agg[agg["setting"] == setting.id]
    out: dict[str, bytes] = {}
    pairs = sorted(a["pair"].unique())
    # 1. gain over the vanilla student per method, error bars = the method's std over seeds; only pairs
    #    with a vanilla run (no empty panels), and no figure at all without one
    gains_by_pair = {}
    for p in pairs:
        rows = _in_order(a[(a["pair"] == p) & (a["method"] != VANILLA)])
        bases = [_baseline(a, r) for _, r in rows.iterrows()]
        keep = [b is not None for b in bases]
        if any(keep):
            gains_by_pair[p] = (rows[keep], rows[keep]["mean"] - [b for b in bases if b is not None])
    if gains_by_pair:
        fig, axes = plt.subplots(1, len(gains_by_pair), figsize=(4.5 * len(gains_by_pair), 3.2), squeeze=False)
        for ax, (p, (rows, gains)) in zip(axes[0], gains_by_pair.items()):
            ax.bar([display(lab, m) for lab, m in zip(rows["label"], rows["method"])], gains,
                   yerr=rows["std"].fillna(0), capsize=3, color=["tab:green" if g >= 0 else "tab:red" for g in gains])
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(p, fontsize=9)
            ax.set_ylabel("gain over vanilla (points)")
            ax.tick_params(axis="x", rotation=45, labelsize=8)
        fig.suptitle(f"{setting.dataset}, {setting.epochs} epochs: gain over the vanilla student", fontsize=10)
        out[f"gain_{_slug(setting.id)}.png"] = _png(fig)
    # 2. accuracy vs student size and FLOPs: only where students differ (one student is one x value)
    if a["student"].nunique() > 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for m, g in a.groupby("label"):
            name = display(m, g["method"].iloc[0])
            axes[0].errorbar(g["student_params"] / 1e6, g["mean"], yerr=g["std"].fillna(0), fmt="o", label=name,
                             capsize=2)
            axes[1].errorbar(g["student_flops"] / 1e6, g["mean"], yerr=g["std"].fillna(0), fmt="o", label=name,
                             capsize=2)
        axes[0].set_xlabel("student parameters (M)")
        axes[1].set_xlabel("student forward MFLOPs per image")
        for ax in axes:
            ax.set_ylabel("test top-1 (%)")
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{setting.dataset}, {setting.epochs} epochs: accuracy vs student cost", fontsize=10)
        out[f"cost_{_slug(setting.id)}.png"] = _png(fig)
    # 3. test-accuracy curves per epoch, one figure per pair
    d = df[(df["setting"] == setting.id) & df["counted"]]
    for p in pairs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, g in d[d["pair"] == p].groupby("label"):
            curves = [c for c in g["curve"]]
            length = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=f"{display(m, g['method'].iloc[0])} (n={len(curves)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{p}, {setting.dataset}: mean test accuracy per epoch", fontsize=9)
        ax.legend(fontsize=7)
        out[f"curves_{_slug(setting.id)}_{_slug(p)}.png"] = _png(fig)
    return out
