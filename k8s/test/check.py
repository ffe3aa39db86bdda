#!/usr/bin/env python3
"""Checks every manifest under k8s/ (run it as k8s/check; README in k8s/README.md).

1. Every YAML file parses (duplicate keys refused); every document is a known object.
2. Istio objects validate against Istio's CRDs (../shared/istio/crd-all.gen.yaml, or
   $SIGMA_ISTIO_CRDS), CEL rules included; core objects against Kubernetes' OpenAPI
   definitions (k8s/test/kubernetes-openapi.json); the IstioOperator against the fields
   istioctl accepts (k8s/test/istiooperator-schema.json).
3. Every kustomization: known fields only, every file it lists exists and parses, every patch
   targets an object of its resources, every image it rewrites is used; and, when `kubectl`
   (with kustomize) is on PATH, `kubectl kustomize` builds it and the built objects are
   validated again. Every manifest file is listed by a kustomization or is a known stand-alone
   file.
4. References inside each build: selectors select pods, named ports exist, ConfigMaps,
   Secrets, ServiceAccounts and Roles referred to exist (or are the documented external
   Secrets), Gateways referred to by VirtualServices exist, and sigma-specific promises
   (sigma-api's environment variables exist, the east-west gateway is on the IstioOperator's
   network, istiod has WorkloadEntry auto-registration and health checks on).
5. Every file in k8s/test/broken/ is rejected with the error its `# expect:` lines name (the
   checks above can fail).
6. The example mesh objects (k8s/istio/examples/) are what sigma-api's export mode generates
   from k8s/istio/examples/inventory.json (needs a built sigma-api; see --sigma-api).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schema  # noqa: E402

K8S = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(K8S)
BROKEN = os.path.join(K8S, "test", "broken")

# Secrets the manifests mount but do not ship (created by the operator or by an operator the
# overlay installs); docs/operator-guide.md says how to create each.
EXTERNAL_SECRETS = {
    "sigma-api-database": "database URL of sigma-api (k8s/base)",
    "sigma-api-admin": "admin key of sigma-api (k8s/base)",
    "sigma-db-app": "written by CloudNativePG for Cluster sigma-db (k8s/overlays/postgres)",
    "sigma-prometheus": "sigma-api readonly key and agent metrics token (k8s/istio/addons)",
}

# Manifest files not listed by any kustomization, and why.
STANDALONE = {
    "istio/istio-operator.yaml": "input of istioctl install, not a cluster object",
    "istio/peer-authentication-strict.yaml": "applied instead of the PERMISSIVE one when every client is in the mesh",
    "istio/examples/mesh.yaml": "generated examples of what sigma-api applies itself",
}

# Parts whose kustomizations must build (the "each buildable with kubectl kustomize").
KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "resources", "images", "patches", "configMapGenerator",
    "secretGenerator", "generatorOptions", "labels", "components", "namespace",
}


class Report:
    def __init__(self):
        self.errors = []
        self.counts = {}

    def add(self, where, msgs):
        for m in msgs:
            self.errors.append("%s: %s" % (where, m))

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n


def rel(path):
    return os.path.relpath(path, ROOT)


def obj_id(o):
    md = o.get("metadata") or {}
    ns = md.get("namespace")
    return "%s %s%s" % (o.get("kind"), ns + "/" if ns else "", md.get("name"))


class Validator:
    def __init__(self, crds_path):
        self.crds = schema.IstioCrds(crds_path)
        self.kube = schema.Kube()
        self.iop = schema.IstioOperatorSchema(self.kube)

    def classify(self, o):
        api = o.get("apiVersion", "")
        group = api.rpartition("/")[0]
        kind = o.get("kind")
        if kind == "Kustomization":
            return "kustomization"
        if api == "install.istio.io/v1alpha1" or kind == "IstioOperator":
            return "istiooperator"
        if group.endswith("istio.io") and self.crds.knows(group):
            return "istio"
        if self.kube.knows(api, kind):
            return "kubernetes"
        if group == "postgresql.cnpg.io":
            return "cnpg"
        if group == "monitoring.coreos.com":
            return "prometheus-operator"
        return None

    def validate(self, o, partial=False):
        """(class, errors) of one object; partial: a strategic-merge patch (required fields
        may be missing, `$patch` directives allowed)."""
        if not isinstance(o, dict) or "kind" not in o or "apiVersion" not in o:
            return None, ["not a Kubernetes object (apiVersion and kind missing)"]
        if partial:
            o = strip_directives(o)
        cls = self.classify(o)
        errs = []
        if cls == "istio":
            self.crds.validate(o, errs, partial)
        elif cls == "kubernetes":
            self.kube.validate(o, errs, partial)
        elif cls == "istiooperator":
            self.iop.validate(o, errs)
        elif cls == "cnpg":
            check_cnpg(o, errs)
        elif cls == "prometheus-operator":
            schema.check_metadata(o, errs)
        elif cls == "kustomization":
            pass
        else:
            errs.append("unknown kind %s %s (neither Istio, nor a checked core kind)" % (
                o.get("apiVersion"), o.get("kind")))
        return cls, errs


def strip_directives(v):
    if isinstance(v, dict):
        return {k: strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [strip_directives(x) for x in v]
    return v


# CloudNativePG's Cluster: its CRD is not in this repository, so only the fields the overlay
# uses are allowed, with their types (from CloudNativePG's API reference, postgresql.cnpg.io/v1).
CNPG_CLUSTER = {
    "spec": {
        "instances": int, "imageName": str, "primaryUpdateStrategy": ("unsupervised", "supervised"),
        "enableSuperuserAccess": bool,
        "storage": {"size": str, "storageClass": str},
        "bootstrap": {"initdb": {"database": str, "owner": str}},
        "postgresql": {"parameters": dict},
        "inheritedMetadata": {"labels": dict, "annotations": dict},
        "resources": {"requests": dict, "limits": dict},
        "monitoring": {"enablePodMonitor": bool},
        "affinity": {"enablePodAntiAffinity": bool, "topologyKey": str},
    },
}


def check_cnpg(o, errs):
    if o.get("apiVersion") != "postgresql.cnpg.io/v1" or o.get("kind") != "Cluster":
        errs.append("only postgresql.cnpg.io/v1 Cluster is known")
        return
    schema.check_metadata(o, errs)
    if not o.get("metadata", {}).get("namespace"):
        errs.append("metadata.namespace: missing")

    def walk(v, s, path):
        if isinstance(s, dict):
            if not isinstance(v, dict):
                errs.append("%s: must be an object" % path)
                return
            for k, x in v.items():
                if k not in s:
                    errs.append("%s.%s: not a field this check knows for a CNPG Cluster" % (path, k))
                else:
                    walk(x, s[k], "%s.%s" % (path, k))
        elif isinstance(s, tuple):
            if v not in s:
                errs.append("%s: %r is not one of %s" % (path, v, s))
        elif s is int:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                errs.append("%s: must be a positive integer" % path)
        elif not isinstance(v, s):
            errs.append("%s: must be %s" % (path, s.__name__))

    walk({k: v for k, v in o.items() if k not in ("apiVersion", "kind", "metadata")}, CNPG_CLUSTER, "")
    if "spec" not in o or "storage" not in o["spec"]:
        errs.append("spec.storage: required")


# ---------------------------------------------------------------------------------------------


def manifest_files():
    out = []
    for d, dirs, files in os.walk(K8S):
        dirs[:] = sorted(x for x in dirs if os.path.join(d, x) != BROKEN)
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                out.append(os.path.join(d, f))
    return out


def load_file(path, report):
    try:
        with open(path) as f:
            return schema.load_docs(f.read())
    except Exception as e:  # YAML errors
        report.add(rel(path), ["does not parse: %s" % e])
        return None


def patch_files():
    """Files that kustomizations use as patches, and files they read as ConfigMap/Secret data."""
    out, data = set(), set()
    for path in manifest_files():
        if os.path.basename(path) != "kustomization.yaml":
            continue
        try:
            k = schema.load_docs(open(path).read())[0]
        except Exception:
            continue
        for p in k.get("patches") or []:
            if isinstance(p, dict) and "path" in p:
                out.add(os.path.normpath(os.path.join(os.path.dirname(path), p["path"])))
        for g in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
            for f in g.get("files") or []:
                data.add(os.path.normpath(os.path.join(os.path.dirname(path), f.split("=", 1)[-1])))
    return out, data


def check_files(v, report):
    """Validates every object of every file; returns {path: [objects]}."""
    objects = {}
    patches, data = patch_files()
    for path in manifest_files():
        r = rel(path)
        if path in data:
            if load_file(path, report) is not None:
                report.count("data files of ConfigMap generators (parsed)")
            continue
        docs = load_file(path, report)
        if docs is None:
            continue
        if r.startswith("k8s/monitoring/") and not all(
                isinstance(d, dict) and "kind" in d for d in docs):
            report.count("monitoring files (not Kubernetes objects; scripts/test-monitoring checks them)")
            continue
        objects[path] = docs
        for i, d in enumerate(docs):
            cls, errs = v.validate(d, partial=path in patches)
            where = "%s[%d] %s" % (r, i, obj_id(d) if isinstance(d, dict) else "")
            report.add(where, errs)
            if cls:
                report.count(cls)
    return objects


# ---------------------------------------------------------------------------------------------
# Kustomize


def kustomize_cmd():
    if os.environ.get("K8S_CHECK_NO_KUSTOMIZE"):
        return None
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        try:
            subprocess.run(["kubectl", "kustomize", "--help"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            return ["kubectl", "kustomize"]
        except (subprocess.SubprocessError, OSError):
            return None
    return None


def resolve_kustomization(kdir, objects, report, seen=None):
    """The objects a kustomization's resources hold (patches not applied), checking every
    reference it makes. Returns (objects, files listed)."""
    seen = seen or set()
    kfile = os.path.join(kdir, "kustomization.yaml")
    if kdir in seen:
        report.add(rel(kfile), ["kustomization cycle"])
        return [], set()
    seen = seen | {kdir}
    docs = objects.get(kfile)
    if not docs or len(docs) != 1:
        report.add(rel(kfile), ["must hold exactly one document"])
        return [], set()
    k = docs[0]
    errs = []
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        errs.append("apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    for key in k:
        if key not in KUSTOMIZE_FIELDS:
            errs.append("%s: not a field this check knows (kustomize may ignore it)" % key)
    out, files = [], {kfile}
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(kdir, res))
        if os.path.isdir(p):
            if not os.path.exists(os.path.join(p, "kustomization.yaml")):
                errs.append("resources: %s is a directory without kustomization.yaml" % res)
                continue
            sub, subfiles = resolve_kustomization(p, objects, report, seen)
            out += sub
            files |= subfiles
        elif os.path.isfile(p):
            if p not in objects:
                errs.append("resources: %s did not parse or is not a manifest" % res)
                continue
            if not os.path.realpath(p).startswith(os.path.realpath(kdir) + os.sep) and not os.path.isdir(p):
                errs.append("resources: %s is outside the kustomization's directory "
                            "(kustomize refuses files outside its root)" % res)
            out += objects[p]
            files.add(p)
        else:
            errs.append("resources: %s does not exist" % res)
    for i, patch in enumerate(k.get("patches", [])):
        target = patch.get("target") or {}
        body = None
        if "path" in patch:
            p = os.path.normpath(os.path.join(kdir, patch["path"]))
            if not os.path.isfile(p):
                errs.append("patches[%d]: %s does not exist" % (i, patch["path"]))
                continue
            files.add(p)
            body = load_file(p, report)
            if body is None:
                continue
            if len(body) != 1:
                errs.append("patches[%d]: %s must hold one document (kustomize %s crashes on several "
                            "with $patch: delete)" % (i, patch["path"], "v5.5"))
        elif "patch" in patch:
            try:
                body = schema.load_docs(patch["patch"])
            except Exception as e:
                errs.append("patches[%d]: does not parse: %s" % (i, e))
                continue
        else:
            errs.append("patches[%d]: needs path or patch" % i)
            continue
        if target:
            want = [target]
        elif body and isinstance(body[0], dict):
            want = [{"kind": body[0].get("kind"), "name": (body[0].get("metadata") or {}).get("name")}]
        else:
            want = []
            errs.append("patches[%d]: a JSON patch needs a target" % i)
        for t in want:
            hits = [o for o in out if isinstance(o, dict)
                    and (not t.get("kind") or o.get("kind") == t["kind"])
                    and (not t.get("name") or (o.get("metadata") or {}).get("name") == t["name"])
                    and (not t.get("namespace") or (o.get("metadata") or {}).get("namespace") == t["namespace"])]
            if not hits:
                errs.append("patches[%d]: no resource %s %s to patch" % (i, t.get("kind"), t.get("name")))
    for i, gen in enumerate(k.get("configMapGenerator", []) + k.get("secretGenerator", [])):
        for f in gen.get("files", []):
            src = f.split("=", 1)[-1]
            p = os.path.normpath(os.path.join(kdir, src))
            if not os.path.isfile(p):
                errs.append("generator %s: file %s does not exist" % (gen.get("name"), src))
            files.add(p)
    images = set()
    for o in out:
        for c in pod_containers(o):
            images.add(c.get("image", "").rsplit("@", 1)[0].rsplit(":", 1)[0])
    for im in k.get("images", []):
        if im.get("name") not in images:
            errs.append("images: %s is not the image of any container" % im.get("name"))
    report.add(rel(kfile), errs)
    return out, files


def pod_spec(o):
    if not isinstance(o, dict):
        return None
    if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return ((o.get("spec") or {}).get("template") or {}).get("spec")
    if o.get("kind") == "CronJob":
        return (((o.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    return None


def pod_labels(o):
    if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
        return ((o["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    return None


def pod_containers(o):
    ps = pod_spec(o) or {}
    return (ps.get("containers") or []) + (ps.get("initContainers") or [])


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(name, objs, report):
    """Cross-object checks inside one build."""
    errs = []
    by = {}
    for o in objs:
        if not isinstance(o, dict) or "kind" not in o:
            continue
        md = o.get("metadata") or {}
        key = (o.get("apiVersion", "").rpartition("/")[0], o["kind"], md.get("namespace"), md.get("name"))
        if key in by:
            errs.append("%s appears twice" % obj_id(o))
        by[key] = o

    def find(kind, ns, n):
        return [o for o in objs if isinstance(o, dict) and o.get("kind") == kind
                and (o.get("metadata") or {}).get("name") == n
                and (ns is None or (o.get("metadata") or {}).get("namespace") == ns)]

    workloads = [o for o in objs if isinstance(o, dict) and pod_labels(o) is not None]
    namespaces = {(o.get("metadata") or {}).get("name") for o in objs if o.get("kind") == "Namespace"}
    for o in objs:
        if not isinstance(o, dict):
            continue
        kind, md = o.get("kind"), o.get("metadata") or {}
        ns = md.get("namespace")
        spec = o.get("spec") or {}
        where = obj_id(o)
        if ns and namespaces and ns not in namespaces and ns not in ("istio-system",):
            errs.append("%s: namespace %s is not created by this build" % (where, ns))
        if kind in ("Deployment", "StatefulSet"):
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not selects(sel, pod_labels(o)):
                errs.append("%s: selector %s does not match its pod labels" % (where, sel))
        ps = pod_spec(o)
        if ps is not None:
            sa = ps.get("serviceAccountName")
            if sa and not find("ServiceAccount", ns, sa):
                errs.append("%s: ServiceAccount %s is not in this build" % (where, sa))
            vols = {v.get("name"): v for v in ps.get("volumes") or []}
            for v in vols.values():
                if "configMap" in v and not find("ConfigMap", ns, v["configMap"].get("name")) \
                        and not v["configMap"].get("optional"):
                    errs.append("%s: volume %s: ConfigMap %s is not in this build" % (
                        where, v["name"], v["configMap"].get("name")))
                if "secret" in v:
                    sn = v["secret"].get("secretName")
                    if not find("Secret", ns, sn) and sn not in EXTERNAL_SECRETS:
                        errs.append("%s: volume %s: Secret %s is neither in this build nor a documented "
                                    "external Secret" % (where, v["name"], sn))
            for c in pod_containers(o):
                cw = "%s container %s" % (where, c.get("name"))
                ports = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
                for m in c.get("volumeMounts") or []:
                    if m.get("name") not in vols:
                        errs.append("%s: volumeMount %s has no volume" % (cw, m.get("name")))
                for ef in c.get("envFrom") or []:
                    ref = ef.get("configMapRef") or {}
                    if ref and not ref.get("optional") and not find("ConfigMap", ns, ref.get("name")):
                        errs.append("%s: envFrom ConfigMap %s is not in this build" % (cw, ref.get("name")))
                    ref = ef.get("secretRef") or {}
                    if ref and not ref.get("optional") and not find("Secret", ns, ref.get("name")) \
                            and ref.get("name") not in EXTERNAL_SECRETS:
                        errs.append("%s: envFrom Secret %s is not in this build" % (cw, ref.get("name")))
                for e in c.get("env") or []:
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and not ref.get("optional") and not find("Secret", ns, ref.get("name")) \
                            and ref.get("name") not in EXTERNAL_SECRETS:
                        errs.append("%s: env %s: Secret %s is not in this build" % (cw, e.get("name"), ref.get("name")))
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    pr = c.get(probe) or {}
                    for h in ("httpGet", "tcpSocket", "grpc"):
                        port = (pr.get(h) or {}).get("port")
                        if isinstance(port, str) and port not in ports:
                            errs.append("%s: %s port %s is not a named container port" % (cw, probe, port))
        if kind == "Service" and spec.get("selector"):
            pods = [w for w in workloads if (w.get("metadata") or {}).get("namespace") == ns
                    and selects(spec["selector"], pod_labels(w))]
            if not pods:
                errs.append("%s: selector %s selects no workload of this build" % (where, spec["selector"]))
            for p in spec.get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and pods and not any(
                        tp in {cp.get("name") for c in pod_containers(w) for cp in c.get("ports") or []}
                        for w in pods):
                    errs.append("%s: targetPort %s is not a named port of the selected pods" % (where, tp))
        if kind in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = ((spec.get("selector") if kind == "PodDisruptionBudget" else spec.get("podSelector")) or {}
                   ).get("matchLabels") or {}
            if not any((w.get("metadata") or {}).get("namespace") == ns and selects(sel, pod_labels(w))
                       for w in workloads):
                errs.append("%s: selector %s selects no workload of this build" % (where, sel))
        if kind == "RoleBinding":
            ref = o.get("roleRef") or {}
            if ref.get("kind") == "Role" and not find("Role", ns, ref.get("name")):
                errs.append("%s: Role %s is not in namespace %s of this build" % (where, ref.get("name"), ns))
            for s in o.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and not find("ServiceAccount", s.get("namespace"), s.get("name")):
                    errs.append("%s: subject ServiceAccount %s/%s is not in this build" % (
                        where, s.get("namespace"), s.get("name")))
        if kind == "Gateway" and o.get("apiVersion", "").startswith("networking.istio.io/"):
            sel = spec.get("selector") or {}
            if not any(selects(sel, pod_labels(w)) for w in workloads):
                errs.append("%s: selector %s selects no gateway workload of this build" % (where, sel))
        if kind == "VirtualService":
            for g in spec.get("gateways") or []:
                if g == "mesh":
                    continue
                gns, _, gname = g.rpartition("/")
                if not find("Gateway", gns or ns, gname):
                    errs.append("%s: gateway %s is not in this build" % (where, g))
    report.add("build of %s" % name, errs)


def kustomize_build(cmd, kdir, v, report):
    try:
        r = subprocess.run(cmd + [kdir], capture_output=True, text=True, timeout=120)
    except subprocess.SubprocessError as e:
        report.add(rel(kdir), ["%s failed: %s" % (" ".join(cmd), e)])
        return None
    if r.returncode != 0:
        report.add(rel(kdir), ["%s failed: %s" % (" ".join(cmd), r.stderr.strip())])
        return None
    try:
        built = schema.load_docs(r.stdout)
    except Exception as e:
        report.add(rel(kdir), ["built output does not parse: %s" % e])
        return None
    for i, o in enumerate(built):
        _, errs = v.validate(o)
        report.add("%s (built)[%d] %s" % (rel(kdir), i, obj_id(o)), errs)
    return built


def check_kustomizations(v, objects, report):
    kdirs = sorted(os.path.dirname(p) for p in objects if os.path.basename(p) == "kustomization.yaml")
    listed = set()
    cmd = kustomize_cmd()
    builds = {}
    for kdir in kdirs:
        objs, files = resolve_kustomization(kdir, objects, report)
        listed |= files
        built = kustomize_build(cmd, kdir, v, report) if cmd else None
        if built is not None:
            report.count("kustomize builds (%s)" % " ".join(cmd))
            objs = built
        builds[kdir] = objs
        check_references(rel(kdir), objs, report)
    if not cmd:
        report.count("kustomize builds skipped (no kubectl/kustomize on PATH; references checked on the "
                     "unpatched resources)")
        if os.environ.get("K8S_CHECK_REQUIRE_KUSTOMIZE"):
            report.add("kustomize", ["K8S_CHECK_REQUIRE_KUSTOMIZE is set but neither kustomize nor kubectl runs"])
    for path in objects:
        r = os.path.relpath(path, K8S)
        if path in listed or r.startswith("monitoring/") or r in STANDALONE:
            continue
        report.add(rel(path), ["listed by no kustomization and not a known stand-alone file (STANDALONE in "
                               "k8s/test/check.py)"])
    for r in STANDALONE:
        if not os.path.exists(os.path.join(K8S, r)):
            report.add("k8s/test/check.py", ["STANDALONE names %s, which does not exist" % r])
    return builds


# ---------------------------------------------------------------------------------------------
# sigma's own promises


def sigma_api_env_names():
    src = open(os.path.join(ROOT, "crates", "sigma-api", "src", "config.rs")).read()
    names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src))
    main = open(os.path.join(ROOT, "crates", "sigma-api", "src", "main.rs")).read()
    names |= set(re.findall(r'from_env\("([A-Z0-9_]+)"\)', main))
    return names


def all_objects(objects):
    for path, docs in objects.items():
        for d in docs:
            if isinstance(d, dict):
                yield path, d


def check_sigma(objects, builds, report):
    errs = []
    env_names = sigma_api_env_names()
    if "SIGMA_MESH_MODE" not in env_names or "DATABASE_URL_FILE" not in env_names:
        errs.append("could not read sigma-api's environment variables from crates/sigma-api/src")
    for kdir, objs in builds.items():
        for o in objs:
            if not isinstance(o, dict):
                continue
            md = o.get("metadata") or {}
            if o.get("kind") == "ConfigMap" and md.get("name") == "sigma-api":
                for k in o.get("data") or {}:
                    if k not in env_names:
                        errs.append("%s: ConfigMap sigma-api key %s is not an environment variable of "
                                    "sigma-api" % (rel(kdir), k))
            if o.get("kind") == "Deployment" and md.get("name") == "sigma-api":
                for c in pod_containers(o):
                    for e in c.get("env") or []:
                        if e.get("name") not in env_names:
                            errs.append("%s: sigma-api env %s is not an environment variable of sigma-api" % (
                                rel(kdir), e.get("name")))
    iops = [o for _, o in all_objects(objects) if o.get("kind") == "IstioOperator"]
    gateways = [o for _, o in all_objects(objects)
                if o.get("kind") == "Service" and (o.get("metadata") or {}).get("name") == "istio-eastwestgateway"]
    if len(iops) != 1:
        errs.append("expected one IstioOperator (k8s/istio/istio-operator.yaml), found %d" % len(iops))
    if not gateways:
        errs.append("no Service istio-eastwestgateway")
    if iops and gateways:
        values = (iops[0].get("spec") or {}).get("values") or {}
        g = values.get("global") or {}
        env = (values.get("pilot") or {}).get("env") or {}
        for var in ("PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION", "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS"):
            if str(env.get(var)).lower() != "true":
                errs.append("IstioOperator: values.pilot.env.%s must be \"true\"" % var)
        network = g.get("network")
        cluster = (g.get("multiCluster") or {}).get("clusterName")
        for kdir, o in [(k, o) for k, objs in builds.items() for o in objs if isinstance(o, dict)]:
            md = o.get("metadata") or {}
            if o.get("kind") == "ConfigMap" and md.get("name") == "sigma-api":
                got = (o.get("data") or {}).get("SIGMA_ISTIO_CLUSTER_ID")
                if got != cluster:
                    errs.append(rel(kdir) + ": ConfigMap sigma-api: SIGMA_ISTIO_CLUSTER_ID %r differs from the IstioOperator's "
                                "values.global.multiCluster.clusterName %r (VPS proxies would report another "
                                "cluster)" % (got, cluster))
        for svc in gateways:
            labels = (svc.get("metadata") or {}).get("labels") or {}
            if labels.get("topology.istio.io/network") != network:
                errs.append("Service istio-eastwestgateway: label topology.istio.io/network %r differs from the "
                            "IstioOperator's values.global.network %r" % (
                                labels.get("topology.istio.io/network"), network))
            ports = {p.get("port") for p in (svc.get("spec") or {}).get("ports") or []}
            for want in (15021, 15443, 15012, 15017):
                if want not in ports:
                    errs.append("Service istio-eastwestgateway: port %d missing" % want)
    report.add("sigma", errs)


# ---------------------------------------------------------------------------------------------
# A real API server


def server_check(v, builds, objects, report):
    """Creates every object (dry run, strict field validation) on a real kube-apiserver with
    Istio's CRDs: scripts/e2e/control-plane's, API server and etcd only. Fixtures marked
    `# server: rejected` must be refused by it too."""
    import json as _json
    import tempfile
    cp = os.path.join(ROOT, "scripts", "e2e", "control-plane")
    kubectl = shutil.which("kubectl")
    if not os.access(cp, os.X_OK) or not kubectl:
        report.add("--server", ["needs scripts/e2e/control-plane and kubectl"])
        return
    d = tempfile.mkdtemp(prefix="k8s-check-server.")
    env = dict(os.environ, E2E_ISTIOD="0")
    try:
        r = subprocess.run([cp, "up", d], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            report.add("--server", ["control plane did not start: %s" % (r.stderr or r.stdout)[-2000:]])
            return
        kc = os.path.join(d, "kubeconfig")

        def dry_run(docs):
            text = "\n".join(_json.dumps(x) for x in docs)
            return subprocess.run([kubectl, "--kubeconfig", kc, "apply", "--dry-run=server", "--validate=strict",
                                   "-f", "-"], input=text, capture_output=True, text=True, timeout=120)

        def served(o):
            # Kinds this API server has: core kinds and Istio's CRDs (not CloudNativePG's,
            # not istioctl's IstioOperator, not prometheus-operator's).
            return isinstance(o, dict) and v.classify(o) in ("kubernetes", "istio")

        sets = [(rel(k), objs) for k, objs in builds.items()]
        for path, docs in objects.items():
            r_ = os.path.relpath(path, K8S)
            if r_ in STANDALONE:
                sets.append((rel(path), docs))
        for name, docs in sets:
            docs = [o for o in docs if served(o)]
            if not docs:
                continue
            r = dry_run(docs)
            report.count("objects created on a real API server (dry run)", len(docs))
            if r.returncode != 0:
                report.add("%s (API server)" % name, [r.stderr.strip()])
        for f in sorted(os.listdir(BROKEN)):
            text = open(os.path.join(BROKEN, f)).read()
            if "# server: rejected" not in text:
                continue
            r = subprocess.run([kubectl, "--kubeconfig", kc, "apply", "--dry-run=server", "--validate=strict",
                                "-f", os.path.join(BROKEN, f)], capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                report.add("k8s/test/broken/%s (API server)" % f, ["was accepted by the API server"])
            else:
                report.count("broken fixtures rejected by the API server too")
    finally:
        subprocess.run([cp, "down", d], env=env, capture_output=True, timeout=300)
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Broken fixtures


def check_broken(v, report):
    if not os.path.isdir(BROKEN):
        report.add(rel(BROKEN), ["missing"])
        return
    for f in sorted(os.listdir(BROKEN)):
        kdir = os.path.join(BROKEN, f)
        if os.path.isdir(kdir):
            # A broken kustomization: its files, resolved as the real ones are.
            kfile = os.path.join(kdir, "kustomization.yaml")
            text = open(kfile).read()
            expects = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]
            objs = {}
            for g in sorted(os.listdir(kdir)):
                if g.endswith(".yaml"):
                    objs[os.path.join(kdir, g)] = schema.load_docs(open(os.path.join(kdir, g)).read())
            sub = Report()
            resolve_kustomization(kdir, objs, sub)
            for e in expects:
                if not any(e in x for x in sub.errors):
                    report.add(rel(kfile), ["was not rejected with %r; errors were: %s" % (e, sub.errors or "none")])
            report.count("broken fixtures rejected")
            continue
        if not f.endswith(".yaml"):
            continue
        path = os.path.join(BROKEN, f)
        text = open(path).read()
        expects = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]
        if not expects:
            report.add(rel(path), ["has no '# expect: <error text>' line"])
            continue
        errs = []
        try:
            docs = schema.load_docs(text)
        except Exception as e:
            errs = [str(e)]
            docs = []
        for d in docs:
            errs += v.validate(d)[1]
        if docs and any(isinstance(d, dict) and d.get("kind") for d in docs):
            sub = Report()
            check_references(f, docs, sub)
            errs += sub.errors
        for e in expects:
            if not any(e in x for x in errs):
                report.add(rel(path), ["was not rejected with %r; errors were: %s" % (e, errs or "none")])
        report.count("broken fixtures rejected")


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crds", default=os.environ.get("SIGMA_ISTIO_CRDS",
                                                     os.path.join(ROOT, "..", "shared", "istio", "crd-all.gen.yaml")))
    ap.add_argument("--sigma-api", default=os.environ.get("SIGMA_API_BIN"),
                    help="sigma-api binary for the examples check (default: the newest of "
                         "$CARGO_TARGET_DIR or target/, debug or release)")
    ap.add_argument("--files", nargs="*", help="only validate these files (no kustomize, no cross-checks)")
    ap.add_argument("--server", action="store_true", default=bool(os.environ.get("K8S_CHECK_SERVER")),
                    help="also create every object (dry run) on a real kube-apiserver from "
                         "scripts/e2e (its binaries must be built: scripts/e2e/build-components)")
    a = ap.parse_args()
    if not os.path.exists(a.crds):
        sys.exit("k8s/check: Istio CRDs not found at %s (set SIGMA_ISTIO_CRDS)" % a.crds)
    v = Validator(a.crds)
    report = Report()
    if a.files:
        for path in a.files:
            docs = load_file(path, report) or []
            for i, d in enumerate(docs):
                report.add("%s[%d] %s" % (path, i, obj_id(d) if isinstance(d, dict) else ""), v.validate(d)[1])
    else:
        objects = check_files(v, report)
        builds = check_kustomizations(v, objects, report)
        check_sigma(objects, builds, report)
        check_broken(v, report)
        if a.server:
            server_check(v, builds, objects, report)
        import addons
        addons.check(report)
        import examples
        examples.check(a.sigma_api, report)
    for e in report.errors:
        print("ERROR " + e)
    summary = ", ".join("%s: %d" % (k, n) for k, n in sorted(report.counts.items()))
    print("k8s/check: %s" % summary)
    print("k8s/check: %d error(s)" % len(report.errors))
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    main()
