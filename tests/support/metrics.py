"""A worker's ``/metrics``, read with prometheus-client's own parser.

Prometheus gives no meaning to the order of labels or to how a number is written
(``3``, ``3.0``), so the tests look samples up by name and labels, never by line.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import call


def labelled(name: str, **labels: str) -> str:
    """A sample's name and labels as one string, labels in name order."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition, by ``labelled``."""
    return {
        labelled(s.name, **s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 30
) -> dict[str, float]:
    """The samples of the worker at ``url``."""
    answer = call(url + "/metrics", headers=headers, timeout=timeout)
    assert answer.status == 200, answer.raw
    return samples(answer.raw.decode())
