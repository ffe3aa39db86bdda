"""Validators for the manifests under k8s/: Kubernetes objects against the schemas a real API
server enforces, without an API server.

- Istio kinds: the CRD's openAPIV3Schema from Istio's own CRD bundle (types, required, enums,
  formats, bounds, patterns, oneOf/anyOf/not, list types, unknown fields) and every CEL rule
  (x-kubernetes-validations) of those CRDs, re-implemented below; a rule not in CEL is an
  error, never skipped.
- Core kinds: Kubernetes' OpenAPI v2 definitions (kubernetes-openapi.json, from the
  Kubernetes release's swagger.json); unknown fields are errors, as with kubectl's default
  --validate=strict.
- IstioOperator: the fields istioctl decodes (types.go with DisallowUnknownFields, and the
  values proto), from istiooperator-schema.json.

Every function appends human-readable errors "path: message" to a list.
"""

import ipaddress
import json
import math
import os
import re
from urllib.parse import urlparse

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# YAML


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently; the
    API server's decoder refuses them)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_docs(text):
    """Documents of a multi-document YAML text, empty ones dropped."""
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]


# ---------------------------------------------------------------------------------------------
# Names


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Kinds whose names must be DNS-1123 labels rather than subdomains.
LABEL_NAMED_KINDS = {"Namespace", "Service"}


def check_label_key(key, path, errs):
    if not isinstance(key, str):
        errs.append("%s: label key %r is not a string" % (path, key))
        return
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.append("%s: label key %r: prefix must be a DNS-1123 subdomain" % (path, key))
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        errs.append("%s: label key %r: name must be <= 63 alphanumerics, '-', '_', '.'" % (path, key))


def check_metadata(obj, errs):
    md = obj.get("metadata")
    if not isinstance(md, dict):
        errs.append("metadata: missing")
        return
    name = md.get("name")
    kind = obj.get("kind")
    if not isinstance(name, str) or not name:
        errs.append("metadata.name: missing")
    elif kind in LABEL_NAMED_KINDS:
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            errs.append("metadata.name: %r is not a DNS-1123 label" % name)
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append("metadata.name: %r is not a DNS-1123 subdomain" % name)
    ns = md.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        errs.append("metadata.namespace: %r is not a DNS-1123 label" % (ns,))
    for k, v in (md.get("labels") or {}).items():
        check_label_key(k, "metadata.labels", errs)
        if not isinstance(v, str):
            errs.append("metadata.labels[%s]: value %r is not a string" % (k, v))
        elif len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append("metadata.labels[%s]: %r is not a valid label value" % (k, v))
    for k, v in (md.get("annotations") or {}).items():
        check_label_key(k, "metadata.annotations", errs)
        if not isinstance(v, str):
            errs.append("metadata.annotations[%s]: value %r is not a string" % (k, v))


# ---------------------------------------------------------------------------------------------
# Go durations (CEL duration())


_DUR = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(s):
    """Seconds of a Go duration string ("1h2m", "500ms"); ValueError when malformed."""
    if not isinstance(s, str):
        raise ValueError("not a string")
    t = s
    sign = 1
    if t[:1] in "+-":
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    if t == "0":
        return 0.0
    if not t:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    while pos < len(t):
        m = _DUR.match(t, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError("invalid duration %r" % s)
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return sign * total


# ---------------------------------------------------------------------------------------------
# CEL: every rule of Istio's CRDs (crd-all.gen.yaml), as Python. Keyed by the rule text with
# whitespace collapsed. `self` is the value the rule is attached to.


def _has(o, k):
    return isinstance(o, dict) and k in o


def _get(o, k, default):
    return o[k] if _has(o, k) else default


def _is_url(s):
    try:
        u = urlparse(s)
    except ValueError:
        return False
    return bool(u.scheme) and bool(u.netloc or u.path)


def _scheme_ok(s, allowed):
    if _is_url(s):
        return urlparse(s).scheme in allowed
    return _is_url("http://" + s) and urlparse("http://" + s).scheme in allowed


CEL = {
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in k for k in _get(s, "addresses", []))
                       and _get(s, "resolution", "NONE") not in ("STATIC", "NONE")),
    '!self.contains("*")': lambda s: "*" not in s,
    '((has(self.operation) ? self.operation : "") == "REMOVE") ? !has(self.value) : true':
        lambda s: not _has(s, "value") if _get(s, "operation", "") == "REMOVE" else True,
    '((has(self.operation) ? self.operation : "") == "UPSERT") ? (self.value != "") : true':
        lambda s: s.get("value") != "" if _get(s, "operation", "") == "UPSERT" else True,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true':
        lambda s: len(_get(s, "endpoints", [])) <= 1
        if _get(s, "resolution", "") == "DNS_ROUND_ROBIN" else True,
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: not _has(s, "endpoints") if _get(s, "resolution", "NONE") == "NONE" else True,
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda s: not _has(s, "ports") if _get(s, "address", "").startswith("unix://") else True,
    '(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda s: _has(s, "credentialName") + _has(s, "credentialNames") <= 1,
    '(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1':
        lambda s: _has(s, "credentialNames") + _has(s, "tlsCertificates") <= 1,
    '(has(self.jwksUri) ? 1 : 0) + (has(self.jwks_uri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1':
        lambda s: _has(s, "jwksUri") + _has(s, "jwks_uri") + _has(s, "jwks") <= 1,
    '(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _has(s, "selector") + _has(s, "targetRef") + _has(s, "targetRefs") <= 1,
    '(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _has(s, "selector") + _has(s, "targetRefs") <= 1,
    '(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && '
    '!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true':
        lambda s: not any(_has(s, k) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces"))
        if (_has(s, "serviceAccounts") or _has(s, "notServiceAccounts")) else True,
    '(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1':
        lambda s: _has(s, "tlsCertificates") + _has(s, "credentialNames") <= 1,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: _get(s, "valueFrom", "") != "HOST" or not _has(s, "value"),
    '(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1':
        lambda s: _has(s, "workloadSelector") + _has(s, "endpoints") <= 1,
    '(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _has(s, "workloadSelector") + _has(s, "targetRefs") <= 1,
    '0 < self && self <= 65535': lambda s: 0 < s <= 65535,
    "duration(self) >= duration('1ms')": lambda s: go_duration(s) >= 0.001,
    'has(self.address) || has(self.network)': lambda s: _has(s, "address") or _has(s, "network"),
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : '
    '!has(self.waypoint)':
        lambda s: (_has(s, "waypoint") if s["context"] == "WAYPOINT" else not _has(s, "waypoint"))
        if _has(s, "context") else not _has(s, "waypoint"),
    'has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? '
    'self.selector.matchLabels : {}).size() > 0) : true':
        lambda s: len((s.get("selector") or {}).get("matchLabels") or {}) > 0
        if _has(s, "portLevelMtls") else True,
    'has(self.wasm) != has(self.lua)': lambda s: _has(s, "wasm") != _has(s, "lua"),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "file", "oci"]) : '
    '(isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "file", "oci"])':
        lambda s: _scheme_ok(s, ("", "http", "https", "file", "oci")),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        lambda s: _scheme_ok(s, ("", "http", "https", "file", "oci")),
    'self != "*"': lambda s: s != "*",
    'self in ["", "HTTP", "HTTPS"]': lambda s: s in ("", "HTTP", "HTTPS"),
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    'self.all(key, 0 < int(key) && int(key) <= 65535)':
        lambda s: all(re.fullmatch(r"-?[0-9]+", k) and 0 < int(k) <= 65535 for k in s),
    'self.all(key, key.size() != 0)': lambda s: all(len(k) != 0 for k in s),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        lambda s: all(len(k) < 63 and re.search(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$", k) for k in s),
    'self.all(l1, self.exists_one(l2, l1.number == l2.number))':
        lambda s: all(sum(1 for b in s if b.get("number") == a.get("number")) == 1 for a in s),
    'self.size() == 0': lambda s: len(s) == 0,
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda s: not s.endswith("/") if s.startswith("unix://") else True,
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true':
        lambda s: s[7:8] in ("/", "@") if s.startswith("unix://") else True,
    'url(self).getScheme() in ["http", "https"]': lambda s: urlparse(s).scheme in ("http", "https"),
}
CEL = {" ".join(k.split()): v for k, v in CEL.items()}


# ---------------------------------------------------------------------------------------------
# OpenAPI v3 (CRD structural schemas)


def _type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


_FORMAT_RANGES = {
    "int32": (-2 ** 31, 2 ** 31 - 1),
    "uint32": (0, 2 ** 32 - 1),
    "int64": (-2 ** 63, 2 ** 63 - 1),
    "uint64": (0, 2 ** 64 - 1),
}


def _format_ok(fmt, v):
    if fmt in _FORMAT_RANGES and isinstance(v, int) and not isinstance(v, bool):
        lo, hi = _FORMAT_RANGES[fmt]
        return lo <= v <= hi
    if fmt == "date-time" and isinstance(v, str):
        return re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", v) is not None
    return True


class V3:
    """Validates a value against a CRD openAPIV3Schema. partial: a patch, required fields may
    be absent."""

    def __init__(self, errs, partial=False):
        self.errs = errs
        self.partial = partial

    def err(self, path, msg):
        self.errs.append("%s: %s" % (path or "<root>", msg))

    def matches(self, v, schema):
        sub = V3([])
        sub.validate(v, schema, "")
        return not sub.errs

    def validate(self, v, s, path):
        if v is None:
            if not s.get("nullable"):
                self.err(path, "null is not allowed")
            return
        t = s.get("type")
        if s.get("x-kubernetes-int-or-string"):
            if not (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))):
                self.err(path, "must be an integer or a string, not %s" % _type_name(v))
                return
        elif t:
            actual = _type_name(v)
            ok = actual == t or (t == "number" and actual == "integer")
            if not ok:
                self.err(path, "must be %s, not %s (%r)" % (t, actual, v))
                return
        if "enum" in s and v not in s["enum"]:
            self.err(path, "%r is not one of %s" % (v, s["enum"]))
        if "format" in s and not _format_ok(s["format"], v):
            self.err(path, "%r is not a valid %s" % (v, s["format"]))
        if isinstance(v, str):
            if "maxLength" in s and len(v) > s["maxLength"]:
                self.err(path, "longer than %d characters" % s["maxLength"])
            if "minLength" in s and len(v) < s["minLength"]:
                self.err(path, "shorter than %d characters" % s["minLength"])
            if "pattern" in s and not re.search(s["pattern"], v):
                self.err(path, "%r does not match %s" % (v, s["pattern"]))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "maximum" in s and (v >= s["maximum"] if s.get("exclusiveMaximum") else v > s["maximum"]):
                self.err(path, "%r is above the maximum %r" % (v, s["maximum"]))
            if "minimum" in s and (v <= s["minimum"] if s.get("exclusiveMinimum") else v < s["minimum"]):
                self.err(path, "%r is below the minimum %r" % (v, s["minimum"]))
        if isinstance(v, list):
            if "maxItems" in s and len(v) > s["maxItems"]:
                self.err(path, "more than %d items" % s["maxItems"])
            if "minItems" in s and len(v) < s["minItems"]:
                self.err(path, "fewer than %d items" % s["minItems"])
            lt = s.get("x-kubernetes-list-type")
            if lt == "set":
                seen = []
                for item in v:
                    if item in seen:
                        self.err(path, "duplicate item %r in a set" % (item,))
                    seen.append(item)
            elif lt == "map":
                keys = s.get("x-kubernetes-list-map-keys", [])
                seen = []
                for item in v:
                    k = tuple(item.get(x) for x in keys) if isinstance(item, dict) else item
                    if k in seen:
                        self.err(path, "duplicate map-list key %r" % (k,))
                    seen.append(k)
            if "items" in s:
                for i, item in enumerate(v):
                    self.validate(item, s["items"], "%s[%d]" % (path, i))
        if isinstance(v, dict):
            if "maxProperties" in s and len(v) > s["maxProperties"]:
                self.err(path, "more than %d properties" % s["maxProperties"])
            if "minProperties" in s and len(v) < s["minProperties"]:
                self.err(path, "fewer than %d properties" % s["minProperties"])
            for r in [] if self.partial else s.get("required", []):
                if r not in v:
                    self.err(path, "required field %r is missing" % r)
            props = s.get("properties", {})
            addl = s.get("additionalProperties")
            for k, item in v.items():
                sub = "%s.%s" % (path, k) if path else k
                if k in props:
                    self.validate(item, props[k], sub)
                elif isinstance(addl, dict):
                    self.validate(item, addl, "%s[%s]" % (path, k))
                elif addl is True or s.get("x-kubernetes-preserve-unknown-fields") or "type" not in s:
                    pass  # a schema without a type (inside oneOf/anyOf/not) constrains, not prunes
                else:
                    self.err(sub, "unknown field")
        for key in ("allOf",):
            for sub in s.get(key, []):
                self.validate(v, sub, path)
        if "anyOf" in s and not any(self.matches(v, sub) for sub in s["anyOf"]):
            self.err(path, "matches none of anyOf %s" % _brief(s["anyOf"]))
        if "oneOf" in s:
            n = sum(1 for sub in s["oneOf"] if self.matches(v, sub))
            if n != 1:
                self.err(path, "matches %d of oneOf %s (exactly one allowed)" % (n, _brief(s["oneOf"])))
        if "not" in s and self.matches(v, s["not"]):
            self.err(path, "matches the forbidden schema %s" % _brief([s["not"]]))
        for rule in s.get("x-kubernetes-validations", []):
            text = " ".join(rule["rule"].split())
            fn = CEL.get(text)
            if fn is None:
                self.err(path, "CEL rule not implemented by k8s/test/schema.py: %s" % text)
                continue
            try:
                ok = fn(v)
            except Exception as e:  # a rule that cannot evaluate fails, as in the API server
                ok = False
                self.err(path, "CEL rule %s: cannot evaluate (%s)" % (text, e))
                continue
            if not ok:
                self.err(path, rule.get("message") or ("fails CEL rule " + text))


def _brief(schemas):
    return json.dumps(schemas, sort_keys=True)[:160]


class IstioCrds:
    """Istio's CRD bundle: (group, version, kind) -> schema."""

    def __init__(self, path):
        self.path = path
        self.versions = {}
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for ver in spec["versions"]:
                    self.versions[(spec["group"], ver["name"], spec["names"]["kind"])] = {
                        "scope": spec["scope"],
                        "served": ver.get("served", False),
                        "deprecated": ver.get("deprecated", False),
                        "schema": ver["schema"]["openAPIV3Schema"],
                    }

    def knows(self, group):
        return any(g == group for g, _, _ in self.versions)

    def validate(self, obj, errs, partial=False):
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        key = (group, version, obj.get("kind"))
        crd = self.versions.get(key)
        if crd is None:
            served = sorted("%s/%s" % (g, v) for g, v, k in self.versions if k == obj.get("kind") and g == group)
            errs.append("apiVersion/kind: %s %s is not in Istio's CRDs (served: %s)" % (
                obj.get("apiVersion"), obj.get("kind"), ", ".join(served) or "none"))
            return
        if not crd["served"]:
            errs.append("apiVersion: %s is not served" % obj["apiVersion"])
        if crd["deprecated"]:
            errs.append("apiVersion: %s is deprecated; use the storage version" % obj["apiVersion"])
        if crd["scope"] == "Namespaced" and not obj.get("metadata", {}).get("namespace"):
            errs.append("metadata.namespace: missing (every namespaced object names its namespace)")
        check_metadata(obj, errs)
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        schema = dict(crd["schema"])
        schema["properties"] = {k: v for k, v in schema.get("properties", {}).items()
                                if k not in ("apiVersion", "kind", "metadata")}
        V3(errs, partial).validate(body, schema, "")


# ---------------------------------------------------------------------------------------------
# Kubernetes OpenAPI v2 (core kinds)


# Kubernetes checks these in Go, not in its OpenAPI schema (which has no enums); the values are
# those of the Kubernetes API reference. (definition, property) -> allowed values, or a range.
KUBE_ENUMS = {
    ("io.k8s.api.core.v1.ServicePort", "protocol"): ("TCP", "UDP", "SCTP"),
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): ("TCP", "UDP", "SCTP"),
    ("io.k8s.api.networking.v1.NetworkPolicyPort", "protocol"): ("TCP", "UDP", "SCTP"),
    ("io.k8s.api.core.v1.ServiceSpec", "type"): ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
    ("io.k8s.api.core.v1.ServiceSpec", "externalTrafficPolicy"): ("Cluster", "Local"),
    ("io.k8s.api.core.v1.ServiceSpec", "internalTrafficPolicy"): ("Cluster", "Local"),
    ("io.k8s.api.core.v1.Container", "imagePullPolicy"): ("Always", "Never", "IfNotPresent"),
    ("io.k8s.api.core.v1.PodSpec", "restartPolicy"): ("Always", "OnFailure", "Never"),
    ("io.k8s.api.apps.v1.DeploymentStrategy", "type"): ("RollingUpdate", "Recreate"),
    ("io.k8s.api.core.v1.TopologySpreadConstraint", "whenUnsatisfiable"): ("DoNotSchedule", "ScheduleAnyway"),
    ("io.k8s.api.core.v1.SeccompProfile", "type"): ("RuntimeDefault", "Unconfined", "Localhost"),
    ("io.k8s.api.networking.v1.NetworkPolicySpec", "policyTypes"): ("Ingress", "Egress"),
    ("io.k8s.api.core.v1.HTTPGetAction", "scheme"): ("HTTP", "HTTPS"),
    ("io.k8s.api.rbac.v1.RoleRef", "kind"): ("Role", "ClusterRole"),
    ("io.k8s.api.rbac.v1.Subject", "kind"): ("ServiceAccount", "User", "Group"),
    ("io.k8s.api.core.v1.ContainerPort", "containerPort"): range(1, 65536),
    ("io.k8s.api.core.v1.ServicePort", "port"): range(1, 65536),
    ("io.k8s.api.core.v1.ServicePort", "nodePort"): range(1, 65536),
    ("io.k8s.api.networking.v1.NetworkPolicyPort", "port"): range(1, 65536),
    ("io.k8s.api.core.v1.HTTPGetAction", "port"): range(1, 65536),
}


def _kube_enum_ok(allowed, v):
    if isinstance(allowed, range):
        return not isinstance(v, int) or isinstance(v, bool) or v in allowed
    if isinstance(v, list):
        return all(x in allowed for x in v)
    return v in allowed


_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")


class Kube:
    """The core Kubernetes kinds of kubernetes-openapi.json."""

    def __init__(self, path=os.path.join(HERE, "kubernetes-openapi.json")):
        data = json.load(open(path))
        self.source = data["source"]
        self.defs = data["definitions"]
        self.kinds = {}
        for name, d in self.defs.items():
            for gvk in d.get("x-kubernetes-group-version-kind", []):
                api = gvk["version"] if not gvk["group"] else "%s/%s" % (gvk["group"], gvk["version"])
                if name in data["roots"]:
                    self.kinds[(api, gvk["kind"])] = name

    CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

    def knows(self, api_version, kind):
        return (api_version, kind) in self.kinds

    def validate(self, obj, errs, partial=False):
        self.partial = partial
        name = self.kinds.get((obj.get("apiVersion"), obj.get("kind")))
        if name is None:
            errs.append("apiVersion/kind: %s %s is not among the checked core kinds "
                        "(add it to KUBE_ROOTS in k8s/test/gen-schemas)" % (obj.get("apiVersion"), obj.get("kind")))
            return
        if obj["kind"] not in self.CLUSTER_SCOPED and not obj.get("metadata", {}).get("namespace"):
            errs.append("metadata.namespace: missing (every namespaced object names its namespace)")
        if obj["kind"] in self.CLUSTER_SCOPED and obj.get("metadata", {}).get("namespace"):
            errs.append("metadata.namespace: %s is cluster-scoped" % obj["kind"])
        check_metadata(obj, errs)
        self.check(obj, {"$ref": "#/definitions/" + name}, "", errs)

    def check_def(self, v, name, path, errs):
        self.partial = False
        self.check(v, {"$ref": "#/definitions/" + name}, path, errs)

    def check(self, v, s, path, errs):
        p = path or "<root>"
        name = None
        if "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[-1]
            s = self.defs[name]
            if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
                if not (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))):
                    errs.append("%s: must be an integer or a string, not %r" % (p, v))
                return
            if name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
                if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (
                        isinstance(v, str) and not _QUANTITY.match(v)):
                    errs.append("%s: %r is not a quantity" % (p, v))
                return
            if name == "io.k8s.apimachinery.pkg.apis.meta.v1.Time":
                if not isinstance(v, str):
                    errs.append("%s: must be a timestamp string" % p)
                return
        if v is None:
            return  # null means unset for the API server's decoder
        t = s.get("type")
        if t:
            actual = _type_name(v)
            if not (actual == t or (t == "number" and actual == "integer")):
                errs.append("%s: must be %s, not %s (%r)" % (p, t, actual, v))
                return
        if "enum" in s and v not in s["enum"]:
            errs.append("%s: %r is not one of %s" % (p, v, s["enum"]))
        if "format" in s and not _format_ok(s["format"], v):
            errs.append("%s: %r is not a valid %s" % (p, v, s["format"]))
        if isinstance(v, list) and "items" in s:
            for i, item in enumerate(v):
                self.check(item, s["items"], "%s[%d]" % (path, i), errs)
        if isinstance(v, dict):
            for r in [] if getattr(self, "partial", False) else s.get("required", []):
                if r not in v:
                    errs.append("%s: required field %r is missing" % (p, r))
            props = s.get("properties")
            addl = s.get("additionalProperties")
            if props is None and addl is None:
                return  # free-form object (RawExtension, JSON)
            for k, item in v.items():
                sub = "%s.%s" % (path, k) if path else k
                if props and k in props:
                    allowed = KUBE_ENUMS.get((name, k))
                    if allowed is not None and item is not None and not _kube_enum_ok(allowed, item):
                        errs.append("%s: %r is not allowed (%s)" % (
                            sub, item, "1-65535" if isinstance(allowed, range) else ", ".join(allowed)))
                    self.check(item, props[k], sub, errs)
                elif isinstance(addl, dict):
                    self.check(item, addl, "%s[%s]" % (path, k), errs)
                else:
                    errs.append("%s: unknown field" % sub)


# ---------------------------------------------------------------------------------------------
# IstioOperator


_PROTO_SCALARS = {
    "string": "string", "bool": "boolean", "uint32": "integer", "int32": "integer",
    "int64": "integer", "uint64": "integer", "double": "number", "float": "number",
    "google.protobuf.BoolValue": "boolean", "google.protobuf.StringValue": "string",
    "google.protobuf.Int32Value": "integer", "google.protobuf.UInt32Value": "integer",
    "google.protobuf.Int64Value": "integer", "google.protobuf.DoubleValue": "number",
    "google.protobuf.Duration": "duration",
}

# Go types of types.go -> Kubernetes definitions.
_GO_KUBE = {
    "*corev1.Affinity": "io.k8s.api.core.v1.Affinity",
    "*corev1.EnvVar": "io.k8s.api.core.v1.EnvVar",
    "*autoscaling.HorizontalPodAutoscalerSpec": "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerSpec",
    "*policy.PodDisruptionBudgetSpec": "io.k8s.api.policy.v1.PodDisruptionBudgetSpec",
    "*corev1.Probe": "io.k8s.api.core.v1.Probe",
    "*corev1.ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "*corev1.ServiceSpec": "io.k8s.api.core.v1.ServiceSpec",
    "*appsv1.DeploymentStrategy": "io.k8s.api.apps.v1.DeploymentStrategy",
    "*corev1.Toleration": "io.k8s.api.core.v1.Toleration",
    "*corev1.PodSecurityContext": "io.k8s.api.core.v1.PodSecurityContext",
    "*corev1.Volume": "io.k8s.api.core.v1.Volume",
    "*corev1.VolumeMount": "io.k8s.api.core.v1.VolumeMount",
}


def _camel(name):
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


class IstioOperatorSchema:
    def __init__(self, kube, path=os.path.join(HERE, "istiooperator-schema.json")):
        data = json.load(open(path))
        self.source = data["source"]
        self.go = data["go"]
        self.messages = data["values"]["messages"]
        self.enums = data["values"]["enums"]
        self.kube = kube

    def validate(self, obj, errs):
        if obj.get("apiVersion") != "install.istio.io/v1alpha1":
            errs.append("apiVersion: IstioOperator is install.istio.io/v1alpha1")
        check_metadata(obj, errs)
        for k in obj:
            if k not in ("apiVersion", "kind", "metadata", "spec"):
                errs.append("%s: unknown field" % k)
        self.go_struct(obj.get("spec") or {}, "IstioOperatorSpec", "spec", errs)

    def go_fields(self, name):
        st = self.go[name]
        fields = dict(st["fields"])
        for e in st["embedded"]:
            fields.update(self.go_fields(e))
        return fields

    def go_struct(self, v, name, path, errs):
        if not isinstance(v, dict):
            errs.append("%s: must be an object" % path)
            return
        fields = self.go_fields(name)
        for k, item in v.items():
            sub = "%s.%s" % (path, k)
            if k not in fields:
                errs.append("%s: unknown field (istioctl refuses it)" % sub)
                continue
            self.go_value(item, fields[k], sub, errs)

    def go_value(self, v, t, path, errs):
        if t == "json.RawMessage":
            if path == "spec.values":
                self.message(v, "Values", path, errs)
            else:
                errs.append("%s: not validated by k8s/check (keep it out, or extend the check)" % path)
            return
        if t in ("any",):
            return
        if t == "string":
            if not isinstance(v, str):
                errs.append("%s: must be a string" % path)
            return
        if t == "uint32":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                errs.append("%s: must be a non-negative integer" % path)
            return
        if t == "*BoolValue":
            if not isinstance(v, bool):
                errs.append("%s: must be true or false" % path)
            return
        if t == "map[string]string":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                errs.append("%s: must be a map of strings" % path)
            return
        if t.startswith("[]"):
            if not isinstance(v, list):
                errs.append("%s: must be a list" % path)
                return
            for i, item in enumerate(v):
                self.go_value(item, t[2:], "%s[%d]" % (path, i), errs)
            return
        if t in _GO_KUBE:
            self.kube.check_def(v, _GO_KUBE[t], path, errs)
            return
        st = t.lstrip("*")
        if st in self.go:
            self.go_struct(v, st, path, errs)
            return
        errs.append("%s: Go type %s not understood by k8s/test/schema.py" % (path, t))

    def message(self, v, name, path, errs):
        if not isinstance(v, dict):
            errs.append("%s: must be an object (%s)" % (path, name))
            return
        fields = {}
        for fname, f in self.messages[name].items():
            fields[fname] = f
            fields[_camel(fname)] = f
        for k, item in v.items():
            sub = "%s.%s" % (path, k)
            if k not in fields:
                errs.append("%s: unknown field of %s (istioctl refuses it)" % (sub, name))
                continue
            f = fields[k]
            if f["repeated"]:
                if not isinstance(item, list):
                    errs.append("%s: must be a list" % sub)
                    continue
                for i, x in enumerate(item):
                    self.proto_value(x, f["type"], "%s[%d]" % (sub, i), errs)
            else:
                self.proto_value(item, f["type"], sub, errs)

    def proto_value(self, v, t, path, errs):
        if t in ("google.protobuf.Struct",):
            if not isinstance(v, dict):
                errs.append("%s: must be an object" % path)
            return
        if t in ("google.protobuf.Value", "google.protobuf.Any"):
            return
        if t.startswith("map<"):
            if not isinstance(v, dict):
                errs.append("%s: must be a map" % path)
                return
            vt = t[4:-1].split(",", 1)[1]
            for k, x in v.items():
                self.proto_value(x, vt, "%s[%s]" % (path, k), errs)
            return
        if t in _PROTO_SCALARS:
            want = _PROTO_SCALARS[t]
            if want == "duration":
                try:
                    go_duration(v)
                except ValueError:
                    errs.append("%s: %r is not a duration" % (path, v))
                return
            actual = _type_name(v)
            if not (actual == want or (want == "number" and actual == "integer")):
                errs.append("%s: must be %s, not %r" % (path, want, v))
            return
        if t in self.enums:
            if v not in self.enums[t]:
                errs.append("%s: %r is not one of %s" % (path, v, self.enums[t]))
            return
        if t == "IntOrString":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                errs.append("%s: must be an integer or a string" % path)
            return
        short = t.rsplit(".", 1)[-1]
        if short in self.messages:
            self.message(v, short, path, errs)
            return
        if t.startswith("k8s.io."):
            return  # Kubernetes types embedded in values (rare); the chart templates them
        errs.append("%s: proto type %s not understood by k8s/test/schema.py" % (path, t))


def is_ip(s):
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
