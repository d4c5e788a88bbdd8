"""The shipped Grafana dashboard and Prometheus rules name only metrics a real hub exports.

Every PromQL expression in `monitoring/` is taken apart by a small tokenizer (metric names
out; label matchers, strings, functions, keywords, durations and numbers skipped), and each
name must be a series of a family the hub's `/metrics` lists. The rules and the example
scrape configuration go through `promtool` when it is there (`scripts/setup.sh` puts it in
`.venv/bin`): `check rules`, `test rules` on the rules' unit tests beside them, `check
config`; and through a structural check of their own always.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import REPO

DASHBOARD = REPO / "monitoring" / "grafana" / "outpost-fleet.json"
RULES = REPO / "monitoring" / "prometheus" / "outpost-alerts.yml"
RULE_TESTS = REPO / "monitoring" / "prometheus" / "outpost-alerts.test.yml"
SCRAPE_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus.yml"
JOB = "outpost-hub"

# Series Prometheus makes itself, and the labels it adds to every scraped series.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round",
    "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    "mad_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh",
    "sin", "sinh", "tan", "tanh", "deg", "rad", "pi", "start", "end",
}  # fmt: skip
# Keywords followed by a parenthesised list of label names.
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9.][0-9A-Za-z_.]*")  # numbers, durations 1h30m
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z0-9_]+)")  # Grafana's $var and ${var}
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*")
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


@dataclass
class Parsed:
    """What one expression references."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)  # name, labels
    functions: set[str] = field(default_factory=set)


class PromQLError(ValueError):
    pass


def _skip_string(text: str, i: int) -> int:
    """The index just after the string literal that starts at `i`."""
    quote = text[i]
    i += 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise PromQLError(f"unterminated string in {text!r}")


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _matchers(text: str, i: int) -> tuple[set[str], int]:
    """Label names of the `{...}` matcher list opening at `i`, and the index after it."""
    assert text[i] == "{"
    i += 1
    names: set[str] = set()
    while True:
        i = _skip_space(text, i)
        if i < len(text) and text[i] == "}":
            return names, i + 1
        match = _MATCHER.match(text, i)
        if not match or match.end() >= len(text) or text[match.end()] not in "\"'`":
            raise PromQLError(f"bad label matcher at {text[i:]!r}")
        names.add(match.group(1))
        i = _skip_space(text, _skip_string(text, match.end()))
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "}":
            raise PromQLError(f"expected , or }} at {text[i:]!r}")


def _group_list(text: str, i: int) -> int:
    """Skip a `(label, ...)` list opening at `i`."""
    end = text.find(")", i)
    if end < 0:
        raise PromQLError(f"unclosed label list in {text!r}")
    for name in text[i + 1 : end].split(","):
        if name.strip() and not _IDENT.fullmatch(name.strip()):
            raise PromQLError(f"bad label name {name.strip()!r} in {text!r}")
    return end + 1


def _range(text: str, i: int) -> int:
    """Skip a `[5m]` range or `[1h:5m]` subquery opening at `i`; durations may be Grafana
    variables (`$__rate_interval`)."""
    end = text.find("]", i)
    if end < 0:
        raise PromQLError(f"unclosed [ in {text!r}")
    parts = [p.strip() for p in text[i + 1 : end].split(":")]
    if len(parts) > 2:
        raise PromQLError(f"bad range {text[i : end + 1]!r}")
    for n, part in enumerate(parts):
        if n == 1 and not part:
            continue  # [1h:] takes the default resolution
        if not (_DURATION.match(part) or _VARIABLE.fullmatch(part)):
            raise PromQLError(f"bad duration {part!r} in {text!r}")
    return end + 1


def parse_promql(text: str) -> Parsed:
    """The metric names (with the label names their matchers use) and the functions an
    expression references. Not a full parser: enough to find names, and to notice
    unbalanced brackets, unknown functions and malformed matchers."""
    parsed = Parsed()
    depth: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif c in "\"'`":
            i = _skip_string(text, i)
        elif c == "$":
            variable = _VARIABLE.match(text, i)
            if not variable:
                raise PromQLError(f"stray $ in {text!r}")
            i = variable.end()
        elif c == "{":  # a selector with no name before it: {__name__=...} is not used here
            raise PromQLError(f"selector without a metric name in {text!r}")
        elif c == "[":
            i = _range(text, i)
        elif c == "(":
            depth.append(c)
            i += 1
        elif c == ")":
            if not depth:
                raise PromQLError(f"unbalanced ) in {text!r}")
            depth.pop()
            i += 1
        elif c.isdigit() or (c == "." and text[i + 1 : i + 2].isdigit()):
            number = _NUMBER.match(text, i)
            assert number
            i = number.end()
        elif ident := _IDENT.match(text, i):
            word = ident.group()
            i = ident.end()
            after = _skip_space(text, i)
            opens = after < len(text) and text[after] == "("
            if word.lower() in KEYWORDS:
                if word.lower() in GROUPING and opens:
                    i = _group_list(text, after)
            elif word in AGGREGATIONS or opens:
                if word not in FUNCTIONS:
                    raise PromQLError(f"unknown function {word}() in {text!r}")
                parsed.functions.add(word)
            else:
                labels: set[str] = set()
                if after < len(text) and text[after] == "{":
                    labels, i = _matchers(text, after)
                parsed.selectors.append((word, labels))
        else:  # operators, commas, @
            i += 1
    if depth:
        raise PromQLError(f"unclosed {depth[-1]} in {text!r}")
    return parsed


def _grafana_query(query: str) -> str:
    """The PromQL inside a Grafana variable query (`label_values(selector, label)`)."""
    match = re.fullmatch(r"\s*label_values\((.*)\)\s*", query, re.DOTALL)
    if not match:
        return query
    inner = match.group(1)
    return inner.rsplit(",", 1)[0] if "," in inner else ""  # label_values(label): no metric


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every panel target and query variable."""
    found = []
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))  # rows may hold collapsed panels
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable ${variable['name']}", _grafana_query(text)))
    return found


def rule_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def _load() -> tuple[dict[str, Any], dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(RULES.read_text())
    assert isinstance(dashboard, dict)
    assert isinstance(rules, dict)
    return dashboard, rules


def _promtool() -> str | None:
    """promtool on PATH, or the one scripts/setup.sh extracts into the venv."""
    found = shutil.which("promtool")
    beside = Path(sys.executable).parent / "promtool"
    return found or (str(beside) if beside.is_file() else None)


def test_the_tokenizer_finds_metric_names_and_nothing_else() -> None:
    parsed = parse_promql(
        'histogram_quantile(0.99, sum by (model, le) (rate(a_bucket{model=~"x|y", '
        "le!='1'}[$__rate_interval] offset 1h)))\n"
        "  / on(instance) group_left(version) b_info > bool 0.5 # a comment naming c\n"
        '  or sum(c_total{reason="{not} a,name"}) without (job) unless d @ 1609746000'
        "  and max_over_time(e[1h:5m]) * 1e3 - Inf + ${var} + count(f) by (g)"
    )
    assert parsed.selectors == [
        ("a_bucket", {"model", "le"}),
        ("b_info", set()),
        ("c_total", {"reason"}),
        ("d", set()),
        ("e", set()),
        ("f", set()),
    ]
    assert parsed.functions == {"histogram_quantile", "sum", "rate", "max_over_time", "count"}
    assert _grafana_query("label_values(g_total{x='1'}, model)") == "g_total{x='1'}"
    for broken in (
        "rate(x[5m]",
        "x[5]",
        "x[5m",
        "sum(x))",
        "x{a=1}",
        "rates(x[5m])",
        'x{a="b"',
        "{a='b'}",
    ):
        with pytest.raises(PromQLError):
            parse_promql(broken)


def test_dashboard_is_well_formed() -> None:
    dashboard, _ = _load()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "outpost-fleet"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}

    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]

    named = {name for _, expr in dashboard_expressions(dashboard) for name, _ in _selectors(expr)}
    wanted = {
        "outpost_hub_devices", "outpost_hub_messages_total", "outpost_hub_tasks",
        "outpost_hub_task_results_total", "outpost_hub_inferences_total",
        "outpost_hub_inference_latency_seconds_bucket",
        "outpost_hub_inference_confidence_bucket", "outpost_hub_device_errors_total",
        "outpost_hub_model_drift_devices", "outpost_hub_model_psi_max",
        "outpost_hub_policy_drift_devices", "outpost_hub_devices_store_over_80",
        "outpost_hub_certificates_expiring", "outpost_hub_devices_revoked",
        "outpost_hub_rollouts", "outpost_hub_http_request_seconds_bucket",
        "outpost_hub_broker_restarts_total", "up",
    }  # fmt: skip
    assert wanted <= named, f"no panel shows {sorted(wanted - named)}"


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    return parse_promql(expr).selectors


WANTED_ALERTS = {
    "OutpostHubDown", "OutpostBrokerRestarting", "OutpostDeviceOffline",
    "OutpostDeviceStoreOver80", "OutpostDeviceErrors", "OutpostMessagesRejected",
    "OutpostCertificatesExpiring", "OutpostPolicyDrift", "OutpostModelDrift",
    "OutpostRolloutHalted",
}  # fmt: skip
_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def _check_rules_structure(rules: dict[str, Any]) -> None:
    """What `promtool check rules` checks that matters here, for machines without it."""
    assert set(rules) == {"groups"}
    group_names = [g["name"] for g in rules["groups"]]
    assert len(group_names) == len(set(group_names)), "group names repeat"
    alerts = []
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            name = rule.get("alert")
            assert isinstance(name, str), rule
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name), rule
            alerts.append(name)
            allowed = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert set(rule) <= allowed, f"{name}: unknown keys {set(rule) - allowed}"
            assert isinstance(rule["expr"], str), name
            assert rule["expr"].strip(), name
            parse_promql(rule["expr"])  # raises on what it cannot take apart
            assert _DURATION.match(str(rule["for"])), f"{name}: for {rule['for']!r}"
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
            for label in rule["labels"]:
                assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label), f"{name}: {label}"
            annotations = rule["annotations"]
            assert set(annotations) >= {"summary", "description"}, name
            for text in annotations.values():
                assert isinstance(text, str), name
                assert text.strip(), name
                # Go templates: braces balance and only reach $labels and $value.
                assert text.count("{{") == text.count("}}"), f"{name}: {text!r}"
                for action in _TEMPLATE.findall(text):
                    assert re.search(r"\$(labels|value)\b", action), f"{name}: {action}"
    assert len(alerts) == len(set(alerts)), "alert names repeat"
    assert set(alerts) >= WANTED_ALERTS, f"missing alerts {WANTED_ALERTS - set(alerts)}"


def _check_scrape_config(config: dict[str, Any]) -> None:
    assert config["rule_files"] == [RULES.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    assert job["scheme"] == "https"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    assert job["tls_config"]["ca_file"]
    assert job["static_configs"][0]["targets"]


def test_alert_rules_and_scrape_config_are_valid() -> None:
    _, rules = _load()
    _check_rules_structure(rules)
    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    _check_scrape_config(scrape)
    # The rules select the hub's job by the name the example scrape configuration gives it.
    jobs = {m for _, expr in rule_expressions(rules) for m in re.findall(r'job="([^"]+)"', expr)}
    assert jobs == {JOB}
    rule_tests = yaml.safe_load(RULE_TESTS.read_text())
    assert rule_tests["rule_files"] == [RULES.name]
    assert rule_tests["tests"]

    promtool = _promtool()
    if promtool is None:
        warnings.warn(
            "promtool not found (scripts/setup.sh extracts it into .venv/bin): the rules had "
            "the structural check only",
            stacklevel=1,
        )
        return
    for command in (
        [promtool, "check", "rules", str(RULES)],
        [promtool, "test", "rules", str(RULE_TESTS)],  # alerts fire when they should
        # --syntax-only: the token and CA files it names exist only on a Prometheus server.
        [promtool, "check", "config", "--syntax-only", str(SCRAPE_CONFIG)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"


def _exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names `/metrics` can produce, and the label names seen per series name.
    A family lists its HELP and TYPE even before it has samples, so names come from the
    family and its type's suffixes, not only from the samples there are."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


async def test_every_metric_the_monitoring_names_is_exported(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    await enroll_device("raspberry-pi-4")  # so the fleet gauges have samples with labels
    reply = await api.call("GET", "/metrics", token=await api.token("viewer"))
    assert reply.status == 200
    exported, labels = _exported(reply.body)

    dashboard, rules = _load()
    missing: dict[str, set[str]] = {}
    wrong_labels: list[str] = []
    for where, expr in dashboard_expressions(dashboard) + rule_expressions(rules):
        for name, used in _selectors(expr):
            if name in PROMETHEUS_OWN:
                continue
            if name not in exported:
                missing.setdefault(name, set()).add(where)
                continue
            # Label names can be checked where the hub has samples to show them.
            unknown = used - labels.get(name, used) - TARGET_LABELS
            if unknown:
                wrong_labels.append(f"{where}: {name} has no label {sorted(unknown)}")

    if missing:
        pytest.fail(
            "named in monitoring/ but not exported by the hub's /metrics:\n"
            + "\n".join(f"  {n}  (in {', '.join(sorted(missing[n]))})" for n in sorted(missing)),
            pytrace=False,
        )
    if wrong_labels:
        pytest.fail("\n".join(wrong_labels), pytrace=False)


SINK_ALERTS = {
    "OutpostSinkLagging", "OutpostSinkDown", "OutpostSinkOverflowed", "OutpostSinkDeadLetters",
}  # fmt: skip


def test_sink_alerts_have_unit_tests_that_fire_and_stay_quiet() -> None:
    """Each sink alert is a rule, and its unit tests (run by promtool above) see it both
    fire and not fire, so a rule that never fires, or always does, fails them."""
    _, rules = _load()
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert set(alerts) >= SINK_ALERTS, f"missing alerts {SINK_ALERTS - set(alerts)}"
    for name in SINK_ALERTS:
        named = [s for s, _ in _selectors(alerts[name]["expr"])]
        assert named, name
        assert all(s.startswith("outpost_hub_sink_") for s in named), (name, named)
    outcomes: dict[str, set[bool]] = {name: set() for name in SINK_ALERTS}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["alertname"] in outcomes:
                outcomes[check["alertname"]].add(bool(check["exp_alerts"]))
    untested = {name: seen for name, seen in outcomes.items() if seen != {True, False}}
    assert not untested, f"sink alerts not seen both firing and quiet: {untested}"
