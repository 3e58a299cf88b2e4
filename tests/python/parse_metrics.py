"""Parses /metrics text from stdin with the Prometheus project's own
parser (prometheus_client's OpenMetrics parser, which rejects anything
malformed) and prints one JSON object per sample: family name and type,
sample name, labels and value. For tests/console.rs."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"family": family.name, "type": family.type, "unit": family.unit,
                          "name": sample.name, "labels": sample.labels, "value": sample.value}))
