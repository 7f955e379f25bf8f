"""Scrapes a Baton /metrics endpoint and parses it with the Prometheus
project's own Python client parser (OpenMetrics), printing every sample as
JSON: [{"name", "labels", "value"}, ...]. Fails if the text does not parse.

    python scrape_metrics.py http://127.0.0.1:PORT/metrics
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    if not content_type.startswith("application/openmetrics-text"):
        sys.exit(f"unexpected Content-Type {content_type!r}")
    families = []
    samples = []
    for family in text_string_to_metric_families(text):
        families.append(family.name)
        for sample in family.samples:
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": dict(sample.labels),
                    "value": sample.value,
                }
            )
    # A family without samples yet (no pool exists) is declared all the same.
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            if name not in families:
                families.append(name)
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()
