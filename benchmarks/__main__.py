"""``python -m benchmarks``: every DESIGN section 8 figure, as a table and as JSON."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import cold, crash, dynamic, overhead, scale, tails, throughput

RESULTS = Path(__file__).parent / "results" / "latest.json"


def _format(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    return f"{value:.1f} {unit}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    for row in rows:
        met = "yes" if row["met"] else "**no**"
        lines.append(
            f"| {row['figure']} | {_format(row['value'], row['unit'])} | {row['target']} | {met} |"
        )
    return "\n".join(lines)


def main() -> int:
    started = time.time()
    rows = (
        throughput.run()
        + cold.run()
        + tails.run()
        + scale.run()
        + overhead.run()
        + dynamic.run()
        + crash.run()
    )
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "python": platform.python_version(),
                "seconds": round(time.time() - started, 1),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS}")
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
