"""PNG pictures where a curve says more than a table. matplotlib loads only when a picture is asked for."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler.errors import InputError


def forecast_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = data["points"]
    if not points:
        raise InputError("forecast: no points to draw")
    times = [datetime.fromisoformat(p["start"].replace("Z", "+00:00")) for p in points]
    fig, (ax_price, ax_carbon) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    ax_price.step(times, [p["price_per_mwh"] for p in points], where="post", color="tab:blue")
    ax_price.set_ylabel(f"price ({data['currency']}/MWh)")
    ax_carbon.plot(times, [p["carbon_g_per_kwh"] for p in points], color="tab:red", label="carbon intensity")
    ax_carbon.set_ylabel("gCO2/kWh")
    estimated = [t for t, p in zip(times, points) if p.get("estimated")]
    if estimated:
        for ax in (ax_price, ax_carbon):
            ax.axvspan(min(estimated), max(estimated), color="0.9", label="estimated")
    share = [p["renewable_share_pct"] for p in points]
    if any(v is not None for v in share):
        ax_share = ax_carbon.twinx()
        ax_share.plot(times, share, color="tab:green", alpha=0.6)
        ax_share.set_ylabel("renewable share (%)")
    ax_price.set_title(f"gsched forecast - sources: {', '.join(sorted({p['source'] for p in points}))}")
    ax_carbon.set_xlabel("UTC")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InputError(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
