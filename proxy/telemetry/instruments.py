"""Prometheus counters and histograms for the event loop: plain numbers, exposed at scrape time.

prometheus_client's instruments guard every value with a lock, because any thread may write
them: a counter's `inc` costs ~0.4 us, a histogram's `observe` ~1 us (two locks and a scan of
the buckets), before `labels()` finds the child. runtap's observers write only from the event
loop, so here a counter is a float in a dict keyed by its label values and a histogram a list of
bucket counts found by bisection: ~0.1-0.2 us each (issue #4).

Scrapes read these from another thread (metrics.py renders /metrics off the loop). Taking a copy
of a dict is atomic under the GIL and each number is read whole, so a scrape sees every series
as it was at some moment of the scrape, as with prometheus_client's own locks.

The exposition is prometheus_client's: the same families, samples, `le` labels and `_created`
series (`PROMETHEUS_DISABLE_CREATED_SERIES` honoured), so dashboards see no difference.
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


def _use_created() -> bool:
    # prometheus_client's own rule (metrics._get_use_created), read at each scrape.
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class LoopCounter:
    """A counter with label values, written from one thread (the event loop) only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[Labels, float] = {}
        self._created: dict[Labels, float] = {}
        if not self.labelnames:
            self.inc((), 0)  # an unlabelled series exists from the start, as prometheus_client's does
        registry.register(self)

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        """Add `amount` to the series of `labels` (values in `labelnames` order)."""
        values = self._values
        value = values.get(labels)
        if value is None:
            self._created[labels] = time.time()
            values[labels] = amount
        else:
            values[labels] = value + amount

    def value(self, labels: Labels = ()) -> float:
        return self._values.get(labels, 0.0)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = self._created if _use_created() else {}
        for labels, value in list(self._values.items()):
            family.add_metric(labels, value, created.get(labels))
        return [family]


class _Series:
    __slots__ = ("counts", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.created = time.time()


class LoopHistogram:
    """A histogram with label values, written from one thread (the event loop) only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds]
        self._series: dict[Labels, _Series] = {}
        if not self.labelnames:
            self._series[()] = _Series(len(bounds))
        registry.register(self)

    def observe(self, labels: Labels, amount: float) -> None:
        """Count `amount` in the series of `labels`: in the first bucket whose bound is >= it."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self._bounds))
        series.counts[bisect_left(self._bounds, amount)] += 1
        series.sum += amount

    def count(self, labels: Labels = ()) -> int:
        series = self._series.get(labels)
        return 0 if series is None else sum(series.counts)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        use_created = _use_created()
        for labels, series in list(self._series.items()):
            counts, total = list(series.counts), series.sum
            cumulative, buckets = 0, []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(labels, buckets, total)
            if use_created:
                family.samples.append(Sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)),
                                             series.created))
        return [family]
