"""What tests/test_manifests.py needs to read k8s/ the way a cluster would: the subset of
kustomize the manifests use (resources, JSON 6902 patches, images), offline schema
validation (kubernetes-validate; vendored CRDs under tests/schemas/), and a container's
command line, environment and mounted files as the kubelet would give them."""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
#: Schemas of this Kubernetes version: native sidecars are stable in it.
KUBERNETES_VERSION = "1.33"
#: The only kustomization fields the manifests use, so that build() is kustomize.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
#: What a fieldRef gives here: a pod's name as a ReplicaSet names it.
POD_NAME_SUFFIX = "-5f7c9d8b6-x2x7q"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


#: libyaml's loader where PyYAML has it: the vendored CRDs are large.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_LOADER) if doc is not None]


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _selected(obj: Mapping[str, Any], target: Mapping[str, str]) -> bool:
    group, version = _group_version(obj["apiVersion"])
    have = {"group": group, "version": version, "kind": obj["kind"]}
    have["name"] = obj["metadata"]["name"]
    return all(have[key] == value for key, value in target.items())


def _set_images(node: Any, image: Mapping[str, str]) -> None:
    """kustomize's images transformer, for containers and initContainers."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                    if name == image["name"]:
                        tag = image.get("newTag")
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{tag}" if tag else new
            else:
                _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


@cache
def _build(directory: Path) -> tuple[dict[str, Any], ...]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(spec) <= KUSTOMIZATION_KEYS, f"{directory}: {set(spec) - KUSTOMIZATION_KEYS}"
    assert spec["kind"] == "Kustomization"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += _build(path) if path.is_dir() else load_documents(path)
    objects = copy.deepcopy(objects)  # private copies
    for patch in spec.get("patches", []):
        assert set(patch) == {"path", "target"}, patch
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(operations, list), f"{patch['path']}: not a JSON 6902 patch"
        hits = [i for i, o in enumerate(objects) if _selected(o, patch["target"])]
        assert len(hits) == 1, f"{patch['path']}: target {patch['target']} matches {len(hits)}"
        objects[hits[0]] = jsonpatch.apply_patch(objects[hits[0]], operations)
    for image in spec.get("images", []):
        _set_images(objects, image)
    ids = [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids)), f"{directory}: an object is defined twice"
    return tuple(objects)


def build(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize directory`` prints, as objects (fresh copies)."""
    return copy.deepcopy(list(_build(directory.resolve())))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


# --- validation -----------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's structural schema, refusing unknown fields as `kubectl apply
    --validate=strict` does (the API server would drop them silently)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and "additionalProperties" not in schema and not preserve:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from the vendored CRDs."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        for crd in load_documents(path):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return out


def validate(obj: dict[str, Any]) -> None:
    """Raises when ``obj`` is not a valid object of its kind (strict: unknown fields
    too). A kind that neither kubernetes-validate nor a vendored CRD knows fails."""
    crd = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        jsonschema.Draft7Validator(crd).validate(obj)
        assert obj["metadata"]["name"]
        return
    try:
        _builtin_validator(obj["apiVersion"], obj["kind"]).validate(obj)
    except FileNotFoundError:
        raise AssertionError(f"{obj['kind']} {obj['apiVersion']}: no schema to check it") from None


@cache
def _builtin_validator(api_version: str, kind: str) -> jsonschema.Validator:
    """kubernetes-validate's strict schema of a kind, its definitions read once (its
    validate() reads them for every object)."""
    schemas = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{schemas}/{kind.lower()}-{group}.json", KUBERNETES_VERSION)
    registry = _definitions() @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def _definitions() -> Resource:
    schemas = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    return Resource.from_contents(
        schema_contents(f"{schemas}/_definitions.json", KUBERNETES_VERSION)
    )


# --- what a container gets ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Container:
    """One container of a workload in a build, as the kubelet would start it."""

    owner: dict[str, Any]
    spec: dict[str, Any]
    init: bool
    objects: list[dict[str, Any]] = field(repr=False)

    @property
    def pod(self) -> dict[str, Any]:
        return self.owner["spec"]["template"]["spec"]

    @property
    def id(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}/{self.spec['name']}"

    @property
    def image_name(self) -> str:
        return re.split(r"[:@]", self.spec["image"], maxsplit=1)[0]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for container in self.pod["containers"] + self.pod.get("initContainers", []):
            for port in container.get("ports", []):
                if port.get("name") == name_or_number:
                    return port["containerPort"]
        raise AssertionError(f"{self.id}: no port named {name_or_number}")

    def ports(self) -> set[int]:
        return {p["containerPort"] for p in self.spec.get("ports", [])}

    def _lookup(self, kind: str, name: str, key: str) -> str:
        obj = find(self.objects, kind, name)
        if key in obj.get("stringData", {}):
            return obj["stringData"][key]
        raw = obj.get("data", {})[key]
        return base64.b64decode(raw).decode() if kind == "Secret" else raw

    def env(self, image_env: Mapping[str, str]) -> dict[str, str]:
        """The image's environment, then envFrom and env in order, $(VAR) expanded."""
        out = dict(image_env)
        declared: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            kind, ref = (
                ("Secret", source["secretRef"])
                if "secretRef" in source
                else (
                    "ConfigMap",
                    source["configMapRef"],
                )
            )
            obj = find(self.objects, kind, ref["name"])
            for key in {**obj.get("data", {}), **obj.get("stringData", {})}:
                declared[source.get("prefix", "") + key] = self._lookup(kind, ref["name"], key)
        for item in self.spec.get("env", []):
            declared[item["name"]] = self._env_value(item, declared)
        return {**out, **declared}

    def _env_value(self, item: dict[str, Any], declared: Mapping[str, str]) -> str:
        if "value" in item:
            return expand(item["value"], declared)
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._lookup("Secret", ref["name"], ref["key"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._lookup("ConfigMap", ref["name"], ref["key"])
        path = source["fieldRef"]["fieldPath"]
        assert path == "metadata.name", f"{self.id}: fieldRef {path} not modelled"
        return self.owner["metadata"]["name"] + POD_NAME_SUFFIX

    def files(self) -> dict[str, str]:
        """Every file the container's configMap and secret volumes put in it."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        out = {}
        for mount in self.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                kind, name = "ConfigMap", volume["configMap"]["name"]
            elif "secret" in volume:
                kind, name = "Secret", volume["secret"]["secretName"]
            else:
                continue
            obj = find(self.objects, kind, name)
            keys = [*obj.get("data", {}), *obj.get("stringData", {})]
            if "subPath" in mount:
                out[mount["mountPath"]] = self._lookup(kind, name, mount["subPath"])
                continue
            for key in keys:
                out[f"{mount['mountPath'].rstrip('/')}/{key}"] = self._lookup(kind, name, key)
        return out


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, others are kept."""
    return _VAR_REF.sub(lambda m: env.get(m[1], m[0]), text)


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj


def containers(objects: list[dict[str, Any]]) -> list[Container]:
    out = []
    for owner in workloads(objects):
        pod = owner["spec"]["template"]["spec"]
        for spec in pod.get("initContainers", []):
            out.append(Container(owner, spec, True, objects))
        for spec in pod["containers"]:
            out.append(Container(owner, spec, False, objects))
    return out


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions In/NotIn/Exists)."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
    else:  # a Service's plain selector
        match, expressions = selector, []
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expression in expressions:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True
