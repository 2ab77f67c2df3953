"""Rebuild scheduler/data/trace_de_2023-06.csv from ../shared/data/traces (run once; the output is committed).

Four weeks (Monday 2023-06-05 00:00 UTC to Monday 2023-07-03 00:00 UTC) of Germany:
- carbon intensity (lifecycle, gCO2eq/kWh) and renewable share (%) from the Electricity Maps hourly export,
- day-ahead price (EUR/MWh, EPEX DE-LU) from sustain-cluster's processed prices, whose timestamps are
  Europe/Paris local time and are converted to UTC here.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "traces"
START = datetime(2023, 6, 5, tzinfo=timezone.utc)
HOURS = 28 * 24


def main() -> None:
    carbon: dict[datetime, tuple[str, str]] = {}
    with (SHARED / "electricitymaps-hourly/DE-LU/DE-LU_2023_hourly.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            t = datetime.fromisoformat(row["Datetime (UTC)"]).replace(tzinfo=timezone.utc)
            carbon[t] = (row["Carbon Intensity gCO₂eq/kWh (LCA)"], row["Renewable Percentage"])
    price: dict[datetime, str] = {}
    paris = ZoneInfo("Europe/Paris")
    with (SHARED / "sustain-cluster-prices/DE-LU/DE-LU_electricity_prices_2023.csv").open() as f:
        for row in csv.DictReader(f):
            local = datetime.fromisoformat(row["Datetime"]).replace(tzinfo=paris)
            price[local.astimezone(timezone.utc)] = row["Price (EUR/MWh)"]
    out = ROOT / "scheduler/data/trace_de_2023-06.csv"
    with out.open("w", newline="") as f:
        f.write("# Germany, 2023-06-05..2023-07-03 UTC, hourly. Built by scripts/make_trace.py.\n"
                "# carbon_g_per_kwh (lifecycle) and renewable_share_pct: Electricity Maps Data Portal hourly export,"
                " ODbL 1.0, via HewlettPackard/sustain-cluster@293fbd15 data/carbon_intensity/DE-LU/2023.\n"
                "# price_eur_per_mwh: EPEX day-ahead DE-LU as published by RTE eco2mix, via"
                " HewlettPackard/sustain-cluster@293fbd15 (MIT) data/electricity_prices/processed/DE-LU/2023,"
                " Europe/Paris local time converted to UTC.\n")
        writer = csv.writer(f)
        writer.writerow(["start_utc", "price_eur_per_mwh", "carbon_g_per_kwh", "renewable_share_pct"])
        for hour in range(HOURS):
            t = START + timedelta(hours=hour)
            ci, share = carbon[t]
            writer.writerow([t.strftime("%Y-%m-%dT%H:%M:%SZ"), price[t], ci, share])
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
