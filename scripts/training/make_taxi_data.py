"""Generates data/taxi-fare.csv: synthetic trips priced by a published-style tariff, with noise; and
dated partitions whose distribution drifts (`partition`), and the frozen evaluation set.

Run once (`python -m scripts.training.make_taxi_data`); the CSVs are committed so training
needs no generator. Drift, day by day from the committed data (day 0): the per-km rate rises
8% a day (a tariff change phased in) and airport pickups grow; the evaluation set
(data/taxi-fare-eval.csv) samples the tariff of day 2, the one in force since it was frozen.
Tariff (USD): 3.20 flag fall, 1.70 per km, 0.45 per minute, 20% night
surcharge (22:00-06:00), 1.00 per extra passenger, and a pickup surcharge by zone (airport
5.00, downtown congestion 2.50, midtown and suburbs none); Gaussian noise for tolls, waits,
rounding. `pickup_zone` is the raw string feature the model looks up in its own graph.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

ROWS = 2000
SEED = 20261122
OUTPUT = Path(__file__).parent / "data" / "taxi-fare.csv"
EVALUATION = Path(__file__).parent / "data" / "taxi-fare-eval.csv"
EVALUATION_ROWS = 400
EVALUATION_DAY = 2
PER_KM_DRIFT = 0.08  # per day
AIRPORT_DRIFT = 5  # weight points per day
COLUMNS = ("distance_km", "duration_min", "hour", "passengers", "pickup_zone", "fare_usd")
ZONE_SURCHARGE = {"airport": 5.00, "downtown": 2.50, "midtown": 0.0, "suburbs": 0.0}
ZONE_WEIGHTS = {"airport": 10, "downtown": 35, "midtown": 35, "suburbs": 20}


def fare(distance_km: float, duration_min: float, hour: int, passengers: int, pickup_zone: str, day: int = 0) -> float:
    base = 3.20 + 1.70 * (1 + PER_KM_DRIFT * day) * distance_km + 0.45 * duration_min + 1.00 * (passengers - 1)
    return base * (1.2 if hour >= 22 or hour < 6 else 1.0) + ZONE_SURCHARGE[pickup_zone]


def trips(rows: int, seed: int, day: int = 0) -> list[list]:
    """`rows` trips of `day` (0: the committed data's tariff and zone mix)."""
    rng = random.Random(seed)
    weights = dict(ZONE_WEIGHTS, airport=ZONE_WEIGHTS["airport"] + AIRPORT_DRIFT * day)
    out = []
    for _ in range(rows):
        distance = round(rng.lognormvariate(1.3, 0.7), 2)
        speed = rng.uniform(12, 45)  # km/h, traffic
        duration = round(distance / speed * 60 + rng.uniform(1, 6), 1)
        hour = rng.randrange(24)
        passengers = rng.choices([1, 2, 3, 4], weights=[60, 25, 10, 5])[0]
        zone = rng.choices(list(weights), weights=list(weights.values()))[0]
        price = fare(distance, duration, hour, passengers, zone, day) + rng.gauss(0, 1.0)
        out.append([distance, duration, hour, passengers, zone, round(max(price, 3.2), 2)])
    return out


def csv_text(rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def partition(day: int, rows: int = 600) -> str:
    """The CSV of one dated partition (`dt=<date>/trips.csv`), `day` days after the committed data."""
    return csv_text(trips(rows, SEED + day, day))


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    # The committed training data predates the partitions (its rows are unchanged by the drift).
    if not OUTPUT.exists():
        OUTPUT.write_text(csv_text(trips(ROWS, SEED)))
    EVALUATION.write_text(csv_text(trips(EVALUATION_ROWS, SEED - 1, EVALUATION_DAY)))


if __name__ == "__main__":
    main()
