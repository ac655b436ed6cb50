"""The Prometheus text format (0.0.4), byte for byte as prometheus-client writes it, faster.

prometheus-client's `generate_latest` spends ~80% of a large scrape re-validating and
escaping the same label names and values on every sample (7 µs a sample here). The
collector hands out the same label dicts scrape after scrape, so this encoder renders each
dict's `{…}` once and reuses it while the dict is in use. Output is checked against
`generate_latest` in tests. Two differences are deliberate, both for the DCGM names, as
dcgm-exporter writes them: an int value prints without a decimal point (`67`, where
prometheus-client prints every value as a float, `67.0`), and a counter whose samples lack
_total keeps its own name on the TYPE line (prometheus-client would add _total there).

`serves_text` picks this format whenever the client accepts it, even where it prefers
OpenMetrics (Prometheus does, at q=1 over q=0.5): the Go exporters answer Prometheus the
same way by default, and OpenMetrics would add nothing this exporter has (exemplars,
`_created`) while costing prometheus-client's slow encoder. docs/exporter.md has the figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# OpenMetrics-only samples that generate_latest moves into gauges after their family.
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def serves_text(accept: str | None) -> bool:
    """Whether the 0.0.4 text format is acceptable to a client sending this Accept header.

    False only when every range the client accepts is something else (OpenMetrics alone);
    a header naming nothing we speak gets the text format too, as from prometheus-client.
    """
    if not accept:
        return True
    offered = False
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        values = dict(p.partition("=")[::2] for p in params)
        try:
            if float(values.get("q", "1")) <= 0:
                continue
        except ValueError:
            continue
        kind = kind.lower()
        if kind in ("*/*", "text/*") or (
            kind == "text/plain" and values.get("version", "0.0.4") == "0.0.4"
        ):
            return True
        offered = offered or kind == "application/openmetrics-text"
    return not offered


def go_float(value: float) -> str:
    """prometheus_client.utils.floatToGoString, typed: Go's float formatting."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go switches to exponents sooner than Python.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def render_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items())) + "}"


@runtime_checkable
class TextRenderer(Protocol):
    """A collector that writes its own text (XpuCollector), skipping Samples for speed."""

    def render_text(self, out: TextEncoder) -> None: ...


class TextEncoder:
    """Not thread-safe: one per exporter, used from the event loop."""

    def __init__(self) -> None:
        # id(labels) -> (labels, rendered). Holding the dict keeps its id from being reused;
        # entries not used by the latest scrape are dropped at its end.
        self._cache: dict[int, tuple[dict[str, str], str]] = {}
        self._used: dict[int, tuple[dict[str, str], str]] = {}
        # Values repeat a lot (one device's reading for each pod holding it). Zero is kept
        # out: -0.0 == 0.0 as a key, but they print differently.
        self._values: dict[float, str] = {}
        self.lines: list[str] = []

    def encode(self, collectors: Iterable[Collector]) -> bytes:
        """The text of the collectors in order (that of their registry, for the same bytes)."""
        self._used, self._values, self.lines = {}, {}, []
        for collector in collectors:
            if isinstance(collector, TextRenderer):
                collector.render_text(self)
            else:
                for metric in collector.collect():
                    self.family(metric)
        self._cache, body = self._used, "".join(self.lines)
        self._used, self._values, self.lines = {}, {}, []
        return body.encode()

    def value(self, v: int | float) -> str:
        if v.__class__ is int:  # a DCGM integer field: printed as dcgm-exporter prints it
            return str(v)
        if not v:  # 0/1 states make zero the commonest value of all
            return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
        text = self._values.get(v)
        if text is None:
            text = self._values[v] = go_float(v)
        return text

    def header(self, name: str, kind: str, doc: str) -> None:
        """HELP and TYPE lines naming `name` as given (the 0.0.4 format lets a counter's name
        lack _total, as dcgm-exporter's DCGM counters do)."""
        kind = _TYPES.get(kind, kind)
        self.lines.append(f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} {kind}\n")

    def family(self, metric: Metric) -> None:
        # The loop below runs once per sample: lookups are inlined.
        cache, used, value, append = self._cache, self._used, self.value, self.lines.append
        type_suffix = {"counter": "_total", "info": "_info"}.get(metric.type, "")
        self.header(metric.name + type_suffix, metric.type, metric.documentation)
        late_names = {metric.name + suffix: suffix for suffix in _OM_SUFFIXES}
        late: dict[str, list[str]] = {}
        for s in metric.samples:
            labels = s.labels
            key = id(labels)
            hit = used.get(key)
            if hit is None:
                hit = cache.get(key)
                if hit is None or hit[0] is not labels:
                    hit = (labels, render_labels(labels))
                used[key] = hit
            line = f"{s.name}{hit[1]} {value(s.value)}\n"
            if s.timestamp is not None:
                line = f"{line[:-1]} {int(float(s.timestamp) * 1000):d}\n"
            suffix = late_names.get(s.name)
            if suffix is None:
                append(line)
            else:
                late.setdefault(suffix, []).append(line)
        doc = _escape_help(metric.documentation)
        for suffix, lines in sorted(late.items()):
            append(f"# HELP {metric.name}{suffix} {doc}\n# TYPE {metric.name}{suffix} gauge\n")
            self.lines.extend(lines)
