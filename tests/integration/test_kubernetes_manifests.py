"""deploy/kubernetes: every manifest is valid Kubernetes, and asks the hub for what it has.

The schemas are the official API's, shipped inside kubernetes-validate's wheel; its strict
set refuses unknown fields at every depth, as `kubectl apply --validate=strict` does. Nothing
is downloaded: a guard makes any connection attempt fail the test. A schema cannot know the
hub, so the checks after it tie the manifests to the real code: the flags `outpost-hub run`
parses, the settings `hub.toml` may hold, the route table, the files `outpost-hub init`
writes and the metric families `/metrics` exports.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hub.api import enroll
from hub.api.agentreleases import MAX_UPLOAD_BYTES
from hub.api.context import ApiContext
from hub.cli import _parser, load_config  # _parser: the real flags, not a copy of them
from hub.initialise import initialise
from hub.monitoring.metrics import HubMetrics
from hub.paths import HubPaths
from hub.store.engine import is_postgres
from tests.support import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are meant for, and a recent one. Each must be one
# the installed kubernetes-validate ships (it fails loudly on one it no longer does).
KUBERNETES_VERSIONS = ("1.29", "1.33")
HEALTH = "/api/v1/health"
PKI_SECRET = "outpost-hub-pki"
# In the folder, deliberately left out of kustomization.yaml (which says why).
NOT_APPLIED = {
    "hub-secret.example.yaml",
    "hub-hpa-ingest-lag.yaml",
    "prometheus-adapter-rules.yaml",
}

Doc = dict[str, Any]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to resolve or connect: the schemas must come from the wheel."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use in an offline test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _load(name: str) -> list[Doc]:
    with (DEPLOY / name).open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _manifests() -> Iterator[tuple[str, Doc]]:
    """Every Kubernetes object in the folder (kustomization.yaml is kustomize's, not one)."""
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _load(path.name):
                yield path.name, doc


def _one(name: str, kind: str) -> Doc:
    (doc,) = [d for d in _load(name) if d["kind"] == kind]
    return doc


def _statefulset() -> Doc:
    return _one("hub-statefulset.yaml", "StatefulSet")


def _hub_container() -> Doc:
    (container,) = _statefulset()["spec"]["template"]["spec"]["containers"]
    return cast(Doc, container)


def _hpas() -> list[Doc]:
    return [_one(f"hub-hpa-{n}.yaml", "HorizontalPodAutoscaler") for n in ("cpu", "ingest-lag")]


def _pod_names() -> list[str]:
    """Every name a hub pod can have: a StatefulSet's <name>-<ordinal>, the ordinals
    0 .. replicas - 1, up to the largest count an HPA may scale it to."""
    most = max(hpa["spec"]["maxReplicas"] for hpa in _hpas())
    return [f"{_statefulset()['metadata']['name']}-{n}" for n in range(most)]


def _hub_toml() -> str:
    return cast(str, _one("hub-configmap.yaml", "ConfigMap")["data"]["hub.toml"])


def _expanded_args(container: Doc, values: dict[str, str]) -> list[str]:
    """The container's args as the kubelet runs them, `$(VAR)` replaced from `values`."""
    defined = {env["name"] for env in container["env"]}

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        # The kubelet leaves an undefined $(VAR) as it is: the hub would get it literally.
        assert name in defined, f"$({name}) is not in the container's env"
        return values[name]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, arg) for arg in container["args"]]


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def _write_toml(text: str, folder: Path) -> Path:
    target = folder / "hub.toml"
    target.write_text(text, encoding="utf-8")
    return target


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


# --- the schemas ---------------------------------------------------------------------------


def test_the_folder_has_every_file_it_should() -> None:
    assert {p.name for p in DEPLOY.iterdir()} == {
        "README.md",
        "kustomization.yaml",
        "hub-statefulset.yaml",
        "hub-service.yaml",
        "hub-configmap.yaml",
        "hub-secret.example.yaml",
        "hub-pdb.yaml",
        "hub-hpa-cpu.yaml",
        "hub-hpa-ingest-lag.yaml",
        "prometheus-adapter-rules.yaml",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    shipped = {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert version in shipped, f"kubernetes-validate ships no {version} schemas: {shipped}"
    checked = []
    for name, doc in _manifests():
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} {where}: {exc.message}")
        assert used == version  # those schemas, not an older set it fell back to
        checked.append(doc["kind"])
    assert sorted(checked) == [
        "ConfigMap",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Secret",
        "Service",
        "Service",
        "StatefulSet",
    ]


def _probe_period_as_text(d: Doc) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "20"


def _misspelt_probe_field(d: Doc) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = HEALTH


def _unknown_spec_field(d: Doc) -> None:
    d["spec"]["replica"] = 3


def _mount_without_path(d: Doc) -> None:
    del d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]


@pytest.mark.parametrize(
    "breakage",
    [_probe_period_as_text, _misspelt_probe_field, _unknown_spec_field, _mount_without_path],
)
def test_the_validator_refuses_a_broken_statefulset(breakage: Callable[[Doc], None]) -> None:
    """The negative control: the check above can fail."""
    broken = copy.deepcopy(_statefulset())
    breakage(broken)
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_the_kustomization_applies_the_hub_and_nothing_else() -> None:
    (kustomization,) = _load("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    assert all((DEPLOY / name).is_file() for name in listed)
    assert {p.name for p in DEPLOY.glob("*.yaml")} - listed == {"kustomization.yaml"} | NOT_APPLIED
    # Two HPAs on one StatefulSet fight; the placeholders must never overwrite real Secrets.
    kinds = [d["kind"] for name in listed for d in _load(name)]
    assert kinds.count("HorizontalPodAutoscaler") == 1
    assert "Secret" not in kinds
    (image,) = kustomization["images"]
    assert _hub_container()["image"].split(":")[0] == image["name"]


def test_the_example_secrets_hold_placeholders_only() -> None:
    for doc in _load("hub-secret.example.yaml"):
        assert doc["kind"] == "Secret"
        assert "data" not in doc
        for key, value in doc["stringData"].items():
            assert "PLACEHOLDER" in value, (doc["metadata"]["name"], key)
            assert "BEGIN" not in value  # no PEM block, even a test one


# --- what the hub needs --------------------------------------------------------------------


def test_the_probes_hit_the_public_health_route_over_https(tmp_path: Path) -> None:
    container = _hub_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    web_port = load_config(tmp_path, _write_toml(_hub_toml(), tmp_path)).web_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == HEALTH, probe
        assert get["scheme"] == "HTTPS", probe
        assert ports[get["port"]] == web_port, probe
    # Public: the kubelet sends no token (and no client certificate).
    routes = enroll.routes(cast(ApiContext, None))  # the context is used only by handlers
    (health,) = [r for r in routes if r.path == HEALTH]
    assert (health.method, health.access) == ("GET", "public")


def test_the_hpas_scale_the_hub_statefulset() -> None:
    statefulset = _statefulset()
    hpas = _hpas()
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": statefulset["apiVersion"],
            "kind": "StatefulSet",
            "name": statefulset["metadata"]["name"],
        }
        assert hpa["spec"]["minReplicas"] == statefulset["spec"]["replicas"] >= 2
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # One name: applying the one replaces the other rather than adding a second.
    assert hpas[0]["metadata"]["name"] == hpas[1]["metadata"]["name"]
    # The HPA's CPU utilisation is a share of the request.
    assert "cpu" in _hub_container()["resources"]["requests"]


def test_the_custom_metric_is_one_the_hub_exports() -> None:
    hpa = _one("hub-hpa-ingest-lag.yaml", "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    metric = pods["metric"]["name"]
    metrics = REPO / "hub" / "monitoring" / "metrics.py"
    assert f'"{metric}"' in metrics.read_text(encoding="utf-8")

    adapter = yaml.safe_load(
        _one("prometheus-adapter-rules.yaml", "ConfigMap")["data"]["config.yaml"]
    )
    (rule,) = [r for r in adapter["rules"] if r["name"]["as"] == metric]
    series = f"{metric}_sum"
    assert rule["seriesQuery"].startswith(f"{series}{{")
    assert re.fullmatch(rule["name"]["matches"], series)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # a Pods metric
    assert "rate(<<.Series>>" in rule["metricsQuery"]

    # What a replica's /metrics says: a histogram of that name, so its _sum series exists.
    exposition = HubMetrics(broker_restarts=lambda: 0).exposition([], {}).decode()
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    assert families[metric].type == "histogram"
    assert f"\n{series} " in exposition


def test_the_pki_secret_is_mounted_read_only_where_the_hub_reads_it(tmp_path: Path) -> None:
    spec = _statefulset()["spec"]["template"]["spec"]
    container = _hub_container()
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == PKI_SECRET]
    assert volume["secret"]["defaultMode"] == 0o400
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    data = _flag(container["args"], "--data")
    assert Path(mount["mountPath"]) == HubPaths(Path(data)).pki
    # Secret files belong to root: the non-root hub reads them through fsGroup.
    security = spec["securityContext"]
    assert security["fsGroup"] == security["runAsGroup"]

    # The example names every file `outpost-hub init` puts in pki/, and nothing else.
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    (example,) = [
        d for d in _load("hub-secret.example.yaml") if d["metadata"]["name"] == PKI_SECRET
    ]
    assert sorted(example["stringData"]) == sorted(p.name for p in paths.pki.iterdir())


def test_the_command_line_and_hub_toml_make_a_replica(tmp_path: Path) -> None:
    container = _hub_container()
    assert container["command"] == ["outpost-hub"]
    (db_secret,) = [
        d for d in _load("hub-secret.example.yaml") if d["metadata"]["name"] == "outpost-hub-db"
    ]
    longest_pod_name = max(_pod_names(), key=len)
    args = _expanded_args(
        container,
        {"POD_NAME": longest_pod_name, "OUTPOST_HUB_DB_URL": db_secret["stringData"]["url"]},
    )
    parsed = _parser().parse_args(args)
    assert parsed.func.target == "hub.cli.daemon:run"

    # The config file is where the ConfigMap puts it.
    (config_mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert parsed.config == Path(config_mount["mountPath"]) / "hub.toml"
    assert config_mount["readOnly"] is True
    config = load_config(
        parsed.data,
        _write_toml(_hub_toml(), tmp_path),
        {"broker": parsed.broker, "db_url": parsed.db, "replica_id": parsed.replica_id},
    )  # raises on an unknown key, a bad value, or a replica without PostgreSQL and broker
    assert config.replica_id == longest_pod_name
    assert is_postgres(config.db_url)
    assert not config.managed_broker
    # Not loopback: the kubelet and the Service reach the pod's IP.
    assert config.web_host == "0.0.0.0"
    assert config.public_url
    assert config.broker_public_url

    # The password reaches libpq from the Secret, never the command line.
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "outpost-hub-db"
    assert env["OUTPOST_HUB_DB_URL"]["valueFrom"]["secretKeyRef"]["name"] == "outpost-hub-db"
    assert "PASSWORD" not in db_secret["stringData"]["url"]


def test_the_hub_runs_locked_down() -> None:
    spec = _statefulset()["spec"]["template"]["spec"]
    container = _hub_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    # Every path the hub writes is a volume: the data folder (lock, CRL), models, agent
    # releases, /tmp.
    paths = HubPaths(Path(_flag(container["args"], "--data")))
    writable = {Path(m["mountPath"]) for m in container["volumeMounts"] if not m.get("readOnly")}
    tmp = Path("/tmp")  # noqa: S108 (the container's, not a file this test makes)
    assert writable == {paths.root, paths.models, paths.agent_releases, tmp}


def test_the_selectors_find_the_hub_pods() -> None:
    statefulset = _statefulset()
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert _matches(statefulset["spec"]["selector"]["matchLabels"], labels)
    services = {d["metadata"]["name"]: d for d in _load("hub-service.yaml")}
    for service in services.values():
        assert _matches(service["spec"]["selector"], labels)
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] in {p["name"] for p in _hub_container()["ports"]}
    # The StatefulSet's governing Service exists, headless.
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    pdb = _one("hub-pdb.yaml", "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] == 1
    # The replicas are spread: anti-affinity to their own pods, per node.
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        t["podAffinityTerm"] for t in affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    ]
    node_terms = [t for t in terms if t["topologyKey"] == "kubernetes.io/hostname"]
    assert node_terms
    assert all(_matches(t["labelSelector"]["matchLabels"], labels) for t in node_terms)


# --- disk ----------------------------------------------------------------------------------

_QUANTITY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9]+)([KMG]i)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * _QUANTITY[unit]


def _empty_dir_limits() -> dict[Path, int]:
    """The sizeLimit of the emptyDir mounted at each path of the hub container."""
    volumes = {v["name"]: v for v in _statefulset()["spec"]["template"]["spec"]["volumes"]}
    return {
        Path(m["mountPath"]): _bytes(volumes[m["name"]]["emptyDir"]["sizeLimit"])
        for m in _hub_container()["volumeMounts"]
        if "emptyDir" in volumes[m["name"]]
    }


def test_agent_releases_have_room_for_the_largest_upload() -> None:
    """An upload is staged in agent-releases/ and taken there (one copy at a time: the
    API's folder is moved, not copied); past its emptyDir's sizeLimit the kubelet evicts
    the pod. The data folder (lock, CRL) is small; releases get a volume of their own."""
    paths = HubPaths(Path(_flag(_hub_container()["args"], "--data")))
    limits = _empty_dir_limits()
    assert limits[paths.agent_releases] > MAX_UPLOAD_BYTES
    assert limits[paths.models] > 0
    # Every emptyDir at its limit fits the pod's ephemeral storage limit.
    limit = _hub_container()["resources"]["limits"]["ephemeral-storage"]
    assert sum(limits.values()) <= _bytes(limit)
