"""PNG figures of bench runs (matplotlib, Agg backend: no display needed).

`scenario` draws one scenario: per recorded channel, the true pressure under
each controller beside the protocol's reference (and what isopress measured),
the error against the reference, the valve openings, and the faults as
vertical lines. `comparison`
draws isopress beside the baselines over several scenarios: hold accuracy,
valve actuations and time below setpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from isopress.bench.metrics import Trace

COLORS = {"isopress": "#1f77b4", "bangbang": "#d62728", "manual": "#7f7f7f"}
MAX_POINTS = 4000


def _envelope(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points that keep each bucket's minimum and maximum,
    so a valve pulse or a spike in a week-long trace still shows."""
    n = len(t)
    if n <= MAX_POINTS:
        return t, y
    k = int(np.ceil(n / (MAX_POINTS // 2)))
    m = n // k * k
    tb = t[:m].reshape(-1, k)
    yb = y[:m].reshape(-1, k)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # buckets with no reference yet
        lo = np.nanmin(yb, axis=1)
        hi = np.nanmax(yb, axis=1)
    tt = np.repeat(tb[:, 0], 2)
    yy = np.empty(2 * len(lo))
    yy[0::2] = lo
    yy[1::2] = hi
    return tt, yy


def _time_axis(t_end: float) -> tuple[float, str]:
    if t_end > 3 * 3600:
        return 3600.0, "h"
    if t_end > 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def scenario(
    name: str,
    description: str,
    runs: Sequence[tuple[str, Trace, Mapping[str, Any]]],
    fault_times: Sequence[float],
    path: Path,
) -> Path:
    """runs: (controller, trace, metrics) in the order to draw them. Per
    channel: pressure, error against the reference (kPa), valve openings."""
    channels = sorted(runs[0][1].ch)
    t_end = max(float(tr.t_s[-1]) for _, tr, _ in runs if len(tr))
    scale, unit = _time_axis(t_end)
    per = 3
    fig, axes = plt.subplots(
        per * len(channels),
        1,
        figsize=(10, 5.6 * len(channels)),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2, 1] * len(channels)},
        squeeze=False,
    )
    for i, ch in enumerate(channels):
        ax, ae, av = (axes[per * i + k][0] for k in range(per))
        ref_drawn = False
        spans = []
        for controller, tr, m in runs:
            c = tr.ch[ch]
            t = tr.t_s / scale
            color = COLORS.get(controller)
            if not ref_drawn and not np.all(np.isnan(c["ref"])):
                ax.plot(*_envelope(t, c["ref"]), "k--", lw=0.8, label="reference")
                ref_drawn = True
            rms = m.get(f"ch{ch}.rms_error_mpa")
            label = f"{controller} (true)"
            if rms is not None:
                label += f", RMS {rms * 1000:.1f} kPa"
            ax.plot(*_envelope(t, c["true"]), color=color, lw=1.0, label=label)
            if controller == "isopress":
                ax.plot(*_envelope(t, c["meas"]), color=color, lw=0.4, alpha=0.4, label="measured")
            err = (c["true"] - c["ref"]) * 1000.0
            ae.plot(*_envelope(t, err), color=color, lw=0.8, label=controller)
            ok = err[~np.isnan(err)]
            if len(ok):
                spans.append(float(np.percentile(np.abs(ok), 99.0)))
            opens = (c["fill_opens"] + c["vent_opens"]).astype(float)
            av.plot(*_envelope(t, opens), color=color, lw=1.0, label=controller)
        for f in fault_times:
            for a in (ax, ae, av):
                a.axvline(f / scale, color="orange", lw=1.0, ls=":")
        if spans:
            # most of the run, not the climb to the first setpoint
            lim = max(1.5 * min(spans), 1.0)
            ae.set_ylim(-lim, lim)
        ae.axhline(0.0, color="k", lw=0.5)
        ax.set_ylabel(f"ch{ch} pressure / MPa")
        ae.set_ylabel("true - reference\n/ kPa")
        av.set_ylabel("valve\nopenings")
        for a in (ax, ae, av):
            a.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1][0].set_xlabel(f"time / {unit}")
    title = name + (f": {description}" if description else "")
    if fault_times:
        title += "  (dotted: fault)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def comparison(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """rows: {"scenario", "channel", "controller", "rms_error_mpa",
    "hold_actuations_per_hour", "time_below_pct"} for each run compared."""
    scen = list(dict.fromkeys(f"{r['scenario']} ch{r['channel']}" for r in rows))
    ctls = list(dict.fromkeys(r["controller"] for r in rows))
    panels = (
        ("rms_error_mpa", "hold error, RMS / kPa", 1000.0, True),
        ("hold_actuations_per_hour", "valve openings per hour of hold", 1.0, True),
        ("time_below_pct", "time below setpoint / %", 1.0, False),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(scen) + 2.2))
    width = 0.8 / max(len(ctls), 1)
    y = np.arange(len(scen))
    for ax, (key, label, k, log) in zip(axes, panels, strict=True):
        for j, ctl in enumerate(ctls):
            vals = []
            for s in scen:
                hit = [
                    r
                    for r in rows
                    if f"{r['scenario']} ch{r['channel']}" == s and r["controller"] == ctl
                ]
                v = hit[0].get(key) if hit else None
                vals.append(np.nan if v is None else v * k)
            ax.barh(y + (j - (len(ctls) - 1) / 2) * width, vals, width, label=ctl,
                    color=COLORS.get(ctl))  # fmt: skip
        ax.set_yticks(y, scen, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("symlog", linthresh=0.1 if key == "rms_error_mpa" else 1.0)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("isopress beside a bang-bang switch and the manual holder (reference plant)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
