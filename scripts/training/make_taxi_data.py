"""Generates data/taxi-fare.csv: synthetic trips priced by a published-style tariff, with noise.

Run once (`python -m scripts.training.make_taxi_data`); the CSV is committed so training
needs no generator. Tariff (USD): 3.20 flag fall, 1.70 per km, 0.45 per minute, 20% night
surcharge (22:00-06:00), 1.00 per extra passenger, and a pickup surcharge by zone (airport
5.00, downtown congestion 2.50, midtown and suburbs none); Gaussian noise for tolls, waits,
rounding. `pickup_zone` is the raw string feature the model looks up in its own graph.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

ROWS = 2000
SEED = 20261122
OUTPUT = Path(__file__).parent / "data" / "taxi-fare.csv"
COLUMNS = ("distance_km", "duration_min", "hour", "passengers", "pickup_zone", "fare_usd")
ZONE_SURCHARGE = {"airport": 5.00, "downtown": 2.50, "midtown": 0.0, "suburbs": 0.0}
ZONE_WEIGHTS = {"airport": 10, "downtown": 35, "midtown": 35, "suburbs": 20}


def fare(distance_km: float, duration_min: float, hour: int, passengers: int, pickup_zone: str) -> float:
    base = 3.20 + 1.70 * distance_km + 0.45 * duration_min + 1.00 * (passengers - 1)
    return base * (1.2 if hour >= 22 or hour < 6 else 1.0) + ZONE_SURCHARGE[pickup_zone]


def main() -> None:
    rng = random.Random(SEED)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for _ in range(ROWS):
            distance = round(rng.lognormvariate(1.3, 0.7), 2)
            speed = rng.uniform(12, 45)  # km/h, traffic
            duration = round(distance / speed * 60 + rng.uniform(1, 6), 1)
            hour = rng.randrange(24)
            passengers = rng.choices([1, 2, 3, 4], weights=[60, 25, 10, 5])[0]
            zone = rng.choices(list(ZONE_WEIGHTS), weights=list(ZONE_WEIGHTS.values()))[0]
            price = fare(distance, duration, hour, passengers, zone) + rng.gauss(0, 1.0)
            writer.writerow([distance, duration, hour, passengers, zone, round(max(price, 3.2), 2)])


if __name__ == "__main__":
    main()
