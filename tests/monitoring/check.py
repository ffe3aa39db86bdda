#!/usr/bin/env python3
"""Checks of sigma's monitoring files, used by scripts/test-monitoring (one subcommand a step).

Each subcommand prints what it checked and exits non-zero on the first kind of failure it
finds (after listing all failures of that kind). Only the standard library and PyYAML.
"""
import argparse
import concurrent.futures
import copy
import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

SEVERITIES = {"critical", "warning", "info"}


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def dump(path, doc):
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False, width=1000)


def alerts_of(rules):
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def fail(errors, what):
    for e in errors:
        print(f"  FAIL: {e}")
    if errors:
        print(f"{what}: {len(errors)} problem(s)")
        sys.exit(1)


def test_files(test_dir):
    return sorted(glob.glob(os.path.join(test_dir, "*.test.yaml")))


def alert_cases(test_dir):
    """{alertname: {"firing": n, "quiet": n}} over every alert_rule_test of every test file."""
    cases = {}
    for path in test_files(test_dir):
        for t in load(path)["tests"]:
            for a in t.get("alert_rule_test", []):
                c = cases.setdefault(a["alertname"], {"firing": 0, "quiet": 0, "files": set()})
                c["firing" if a.get("exp_alerts") else "quiet"] += 1
                c["files"].add(path)
    return cases


# --------------------------------------------------------------------------------------------
def cmd_lint(args):
    """Every alert: severity, summary, description, for:; a firing and a non-firing test."""
    rules = load(args.rules)
    errors = []
    names = set()
    for g in rules["groups"]:
        if str(g.get("interval")) != "1m":
            errors.append(f"group {g['name']}: interval must be 1m (the baseline sample count assumes it)")
        for r in g["rules"]:
            if "record" in r:
                if r["record"].count(":") not in (1, 2):
                    errors.append(f"record {r['record']}: name is not level:metric[:operations]")
                continue
            a = r["alert"]
            if a in names:
                errors.append(f"{a}: defined twice")
            names.add(a)
            if not a.startswith("Sigma"):
                errors.append(f"{a}: alert names start with Sigma")
            if r.get("labels", {}).get("severity") not in SEVERITIES:
                errors.append(f"{a}: severity label must be one of {sorted(SEVERITIES)}")
            for k in ("summary", "description"):
                if not r.get("annotations", {}).get(k):
                    errors.append(f"{a}: no {k} annotation")
            if "{{ $labels.hostname }}" not in r.get("annotations", {}).get("description", "") \
                    and "fleet" not in a.lower() and "Mesh" not in a[:9]:
                errors.append(f"{a}: a per-VPS alert's description names the hostname")
            if "for" not in r:
                errors.append(f"{a}: no for:")
    cases = alert_cases(args.tests)
    for a in sorted(names):
        c = cases.get(a)
        if not c or not c["firing"]:
            errors.append(f"{a}: no test where it fires")
        if not c or not c["quiet"]:
            errors.append(f"{a}: no test where it must not fire")
    for a in sorted(set(cases) - names):
        errors.append(f"tests name alert {a}, which the rules do not define")
    for path in test_files(args.tests):
        rf = load(path).get("rule_files", [])
        if rf != ["../../k8s/monitoring/sigma-rules.yaml"]:
            errors.append(f"{os.path.basename(path)}: rule_files must be [../../k8s/monitoring/sigma-rules.yaml], is {rf}")
    fail(errors, "lint")
    n_f = sum(c["firing"] for c in cases.values())
    n_q = sum(c["quiet"] for c in cases.values())
    print(f"lint: {len(names)} alerts, each with severity/summary/description/for; "
          f"{n_f} firing and {n_q} non-firing assertions, every alert has both")


# --------------------------------------------------------------------------------------------
def cmd_promrule(args):
    """Extract spec.groups of the PrometheusRule and compare it rule by rule with the rules file."""
    rules = load(args.rules)
    pr = load(args.promrule)
    errors = []
    if pr.get("apiVersion") != "monitoring.coreos.com/v1" or pr.get("kind") != "PrometheusRule":
        errors.append("not a monitoring.coreos.com/v1 PrometheusRule")
    for k in ("name", "namespace"):
        if not pr.get("metadata", {}).get(k):
            errors.append(f"metadata.{k} missing")
    groups = pr.get("spec", {}).get("groups", [])
    a = {g["name"]: g for g in rules["groups"]}
    b = {g["name"]: g for g in groups}
    if list(a) != list(b):
        errors.append(f"groups differ: {list(a)} vs {list(b)}")
    n = 0
    for name in a:
        if name not in b:
            continue
        ga, gb = a[name], b[name]
        if {k: v for k, v in ga.items() if k != "rules"} != {k: v for k, v in gb.items() if k != "rules"}:
            errors.append(f"group {name}: settings differ")
        if len(ga["rules"]) != len(gb["rules"]):
            errors.append(f"group {name}: {len(ga['rules'])} rules vs {len(gb['rules'])}")
        for ra, rb in zip(ga["rules"], gb["rules"]):
            n += 1
            if ra != rb:
                errors.append(f"group {name}: rule {ra.get('alert') or ra.get('record')} differs")
    fail(errors, "PrometheusRule")
    dump(args.out, {"groups": groups})
    print(f"PrometheusRule: {n} rules in {len(groups)} groups, identical to sigma-rules.yaml rule by rule")


# --------------------------------------------------------------------------------------------
def retarget_tests(test_dir, rules_path, out_dir, only=None):
    """Copies of the test files whose rule_files point at rules_path; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for path in test_files(test_dir):
        if only is not None and path not in only:
            continue
        t = load(path)
        t["rule_files"] = [os.path.abspath(rules_path)]
        dst = os.path.join(out_dir, os.path.basename(path))
        dump(dst, t)
        out.append(dst)
    return out


def cmd_retarget(args):
    for p in retarget_tests(args.tests, args.rules, args.out):
        print(p)


def cmd_mutants(args):
    rules = load(args.rules)
    spec = load(args.spec)
    cases = alert_cases(args.tests)
    names = [a["alert"] for a in alerts_of(rules)]
    errors = []
    for a in names:
        if not spec.get(a):
            errors.append(f"{a}: no mutant of its own in {os.path.basename(args.spec)}")
    for a in spec:
        if a not in names:
            errors.append(f"{os.path.basename(args.spec)} names {a}, which the rules do not define")
    fail(errors, "mutants")

    jobs = []
    for a in names:
        muts = [{"why": "never fires", "replace_expr": "vector(1) < 0"}] + spec[a]
        for i, m in enumerate(muts):
            mutated = copy.deepcopy(rules)
            rule = next(r for r in alerts_of(mutated) if r["alert"] == a)
            if "replace_expr" in m:
                rule["expr"] = m["replace_expr"]
            if "expr" in m:
                old, new = m["expr"]
                if old not in rule["expr"]:
                    errors.append(f"{a}: mutant '{m['why']}': {old!r} is not in the expression")
                    continue
                rule["expr"] = rule["expr"].replace(old, new)
            if "for" in m:
                rule["for"] = m["for"]
            d = os.path.join(args.work, f"{a}-{i}")
            os.makedirs(d, exist_ok=True)
            rp = os.path.join(d, "rules.yaml")
            dump(rp, mutated)
            jobs.append((a, m, retarget_tests(args.tests, rp, d, only=cases[a]["files"])))
    fail(errors, "mutants")

    def run(job):
        a, m, files = job
        rules_file = os.path.join(os.path.dirname(files[0]), "rules.yaml")
        valid = subprocess.run([args.promtool, "check", "rules", rules_file],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if valid.returncode != 0:
            return a, m, valid
        return a, m, subprocess.run([args.promtool, "test", "rules", *files],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    killed = 0
    survivors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for a, m, r in pool.map(run, jobs):
            if r.returncode == 0:
                survivors.append(f"{a}: mutant '{m['why']}' survives: the tests cannot catch it")
            elif f"alertname: {a}, " not in r.stdout:
                # An invalid mutant, or a failure elsewhere, proves nothing about a's tests.
                errors.append(f"{a}: mutant '{m['why']}' did not fail {a}'s assertions:\n{r.stdout[-2000:]}")
            else:
                killed += 1
    fail(errors + survivors, "mutants")
    print(f"mutants: {killed} broken variants of {len(names)} alerts, every one caught by the tests")


# --------------------------------------------------------------------------------------------
VAR = re.compile(r"\$\{?(\w+)\}?|\[\[(\w+)\]\]")
INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute(expr):
    return VAR.sub(lambda m: INTERVALS.get(m.group(1) or m.group(2), ".+"), expr)


def dashboard_queries(dash):
    """(where, expr) of every panel target and every query variable."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} '{p['title']}' {t['refId']}", t["expr"]))
        for sub in p.get("panels", []):
            for t in sub.get("targets", []):
                out.append((f"panel {sub['id']} '{sub['title']}' {t['refId']}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q, re.S)
            out.append((f"variable {v['name']}", m.group(1) if m else q))
    return out


def cmd_dashboard(args):
    with open(args.dashboard) as f:
        dash = json.load(f)  # valid JSON, or this raises
    errors = []
    for k in ("uid", "title", "panels", "schemaVersion", "templating"):
        if k not in dash:
            errors.append(f"no {k}")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    var_names = {v["name"] for v in dash["templating"]["list"]}
    n_panels = 0
    for p in dash["panels"]:
        if "gridPos" not in p:
            errors.append(f"panel {p.get('id')}: no gridPos")
        if p["type"] == "row":
            continue
        n_panels += 1
        if not p.get("title"):
            errors.append(f"panel {p['id']}: no title")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"panel {p['id']}: datasource is not the $datasource variable")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if not refs or len(refs) != len(set(refs)):
            errors.append(f"panel {p['id']}: targets missing or refIds not unique")
        for t in p.get("targets", []):
            if not t.get("expr"):
                errors.append(f"panel {p['id']} {t.get('refId')}: no expr")
            for m in VAR.finditer(t.get("expr", "")):
                name = m.group(1) or m.group(2)
                if name not in INTERVALS and name not in var_names:
                    errors.append(f"panel {p['id']}: unknown variable ${name}")
    fail(errors, "dashboard")
    queries = dashboard_queries(dash)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}:check", "expr": substitute(e)} for i, (_, e) in enumerate(queries)]}]}
    dump(args.out_rules, rules)
    with open(args.out_queries, "w") as f:
        json.dump([{"where": w, "expr": substitute(e)} for w, e in queries], f, indent=1)
    print(f"dashboard: valid JSON, {n_panels} panels, {len(queries)} queries written for promtool")


# --------------------------------------------------------------------------------------------
def cmd_promconfig(args):
    """A full prometheus.yml around one of the sample scrape files, secrets under args.root."""
    with open(args.scrape) as f:
        text = f.read().replace("/etc/prometheus/", args.root.rstrip("/") + "/etc/prometheus/")
    sample = yaml.safe_load(text)
    made = []
    for job in sample["scrape_configs"]:
        for holder in [job] + job.get("http_sd_configs", []):
            cf = holder.get("authorization", {}).get("credentials_file")
            if cf and args.create_secrets:
                os.makedirs(os.path.dirname(cf), exist_ok=True)
                with open(cf, "w") as f:
                    f.write("test-token-not-a-secret\n")
                made.append(cf)
        for fsd in job.get("file_sd_configs", []):
            for fp in fsd["files"]:
                os.makedirs(os.path.dirname(fp), exist_ok=True)
                with open(fp, "w") as f:
                    json.dump([{"targets": ["127.0.0.1:1"], "labels": {"sigma_target_kind": job["job_name"].split("-")[1], "status": "active"}}], f)
    full = {
        "global": {"scrape_interval": "30s", "evaluation_interval": "1m"},
        "rule_files": [os.path.abspath(r) for r in args.rule_file],
        "scrape_configs": sample["scrape_configs"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    dump(args.out, full)
    print(f"{args.out}: {len(sample['scrape_configs'])} jobs from {os.path.basename(args.scrape)}"
          + (f", {len(made)} credential files created" if made else ""))


def cmd_liveconfig(args):
    """prometheus.yml for the live run: the sample's jobs pointed at the stand-in sigma-api on
    loopback, everything every second; the rules with a 1 s group interval."""
    with open(args.scrape) as f:
        sample = yaml.safe_load(f.read().replace("/etc/prometheus/", args.root.rstrip("/") + "/etc/prometheus/"))
    jobs = []
    for job in sample["scrape_configs"]:
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        for sd in job.get("http_sd_configs", []):
            u = urllib.parse.urlsplit(sd["url"])
            sd["url"] = urllib.parse.urlunsplit(("http", f"127.0.0.1:{args.api_port}", u.path, u.query, ""))
            sd["refresh_interval"] = "1s"
        if "dns_sd_configs" in job:  # sigma-api itself: the stand-in's /metrics
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{args.api_port}"]}]
        jobs.append(job)
    rules = load(args.rules)
    for g in rules["groups"]:
        g["interval"] = "1s"
    dump(args.out_rules, rules)
    dump(args.out, {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [os.path.abspath(args.out_rules), os.path.abspath(args.dash_rules)],
                    "scrape_configs": jobs})
    print(f"{args.out}: {len(jobs)} jobs against 127.0.0.1:{args.api_port}")


# --------------------------------------------------------------------------------------------
def get(base, path, **params):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def poll(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            ok, last = fn()
            if ok:
                return last
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            last = repr(e)
        time.sleep(0.5)
    print(f"  FAIL: {what}: {last}")
    sys.exit(1)


def cmd_live(args):
    base = f"http://127.0.0.1:{args.port}"
    expected_groups = [g["name"] for g in load(args.rules)["groups"]] + ["dashboard"]
    n_rules = sum(len(g["rules"]) for g in load(args.rules)["groups"])
    checks = 0

    # 1. every group loaded, every rule evaluated with health ok
    def rules_ok():
        groups = get(base, "/api/v1/rules")["data"]["groups"]
        names = [g["name"] for g in groups]
        bad = [(r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"]
               if r["health"] != "ok"]
        return sorted(names) == sorted(expected_groups) and not bad, f"groups {names}, unhealthy {bad[:5]}"
    poll("rules loaded and healthy", rules_ok, 30)
    print(f"  ok: {len(expected_groups)} rule groups loaded ({n_rules} sigma rules + dashboard queries), every rule health ok")
    checks += 1

    # 2. targets discovered through the authenticated http_sd, relabeled, scraped
    want = json.load(open(args.expect))
    sigma_labels = ["vps_id", "hostname", "alias", "provider", "country", "city", "purpose", "status", "tags", "sigma_target_kind"]

    def targets_ok():
        t = get(base, "/api/v1/targets")["data"]
        active = t["activeTargets"]
        problems = []
        for job, n in want["active"].items():
            got = [x for x in active if x["labels"]["job"] == job]
            if len(got) != n:
                problems.append(f"{job}: {len(got)} active targets, want {n}")
            for x in got:
                if x["health"] != "up":
                    problems.append(f"{job} {x['scrapeUrl']}: {x['health']} {x.get('lastError')}")
                if job != "sigma-api":
                    missing = [k for k in sigma_labels if k not in x["labels"]]
                    if missing:
                        problems.append(f"{job} {x['scrapeUrl']}: labels missing {missing}")
                if job == "sigma-envoy":
                    if not x["labels"].get("workload_entry"):
                        problems.append(f"{x['scrapeUrl']}: no workload_entry")
                    path = want["envoy_paths"][x["labels"]["workload_entry"]]
                    if urllib.parse.urlsplit(x["scrapeUrl"]).path != path:
                        problems.append(f"{x['scrapeUrl']}: path is not {path}")
        dropped = [x["discoveredLabels"].get("hostname") for x in t["droppedTargets"]]
        for h in want["dropped"]:
            if h not in dropped:
                problems.append(f"{h} should have been dropped by relabeling, dropped: {dropped}")
        return not problems, problems
    poll("targets", targets_ok, 30)
    print(f"  ok: targets per job {want['active']} up, with the sigma labels; envoy paths from "
          f"__metrics_path__ or /stats/prometheus; {len(want['dropped'])} dropped by relabeling")
    checks += 1

    # 3. recorded series built from real scrapes: the inventory join and the Xboard counts
    def query(q):
        return get(base, "/api/v1/query", query=q)["data"]["result"]

    def join_ok():
        got = sorted((s["metric"].get("source_workload"), s["metric"].get("hostname")) for s in query("sigma:vps_mesh_info"))
        return got == sorted(map(tuple, want["mesh_info"])), got
    poll("sigma:vps_mesh_info from real scrapes", join_ok, 30)
    print("  ok: sigma:vps_mesh_info joins every envoy target's workload_entry as source_workload")
    checks += 1

    def xboard_ok():
        got = {s["metric"]["source_workload"]: float(s["value"][1]) for s in query("source_workload:sigma_xboard_requests:increase10m")}
        return bool(got) and all(v > 0 for v in got.values()) and set(got) == set(want["polling"]), got
    poll("source_workload:sigma_xboard_requests:increase10m", xboard_ok, 30)
    labelled = query('istio_requests_total{hostname!="", vps_id!="", sigma_target_kind="envoy"}')
    dropped_family = query("istio_request_bytes_bucket")
    if not labelled or dropped_family:
        print(f"  FAIL: scraped Istio series carry target labels: {bool(labelled)}; size histograms dropped: {not dropped_family}")
        sys.exit(1)
    print("  ok: Xboard request counts recorded per source_workload; scraped series carry the VPS labels; "
          "istio_request_bytes_* dropped")
    checks += 1

    # 4. every dashboard query is accepted by the real query engine
    bad = []
    for q in json.load(open(args.queries)):
        try:
            r = get(base, "/api/v1/query", query=q["expr"])
            if r.get("status") != "success":
                bad.append(f"{q['where']}: {r}")
        except urllib.error.HTTPError as e:
            bad.append(f"{q['where']}: HTTP {e.code} {e.read()[:200]!r}")
    fail(bad, "dashboard queries")
    print(f"  ok: all {len(json.load(open(args.queries)))} dashboard queries run on the live Prometheus")
    checks += 1
    print(f"live: {checks} checks passed")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("lint"); s.add_argument("rules"); s.add_argument("tests"); s.set_defaults(fn=cmd_lint)
    s = sub.add_parser("promrule"); s.add_argument("rules"); s.add_argument("promrule"); s.add_argument("out"); s.set_defaults(fn=cmd_promrule)
    s = sub.add_parser("retarget"); s.add_argument("tests"); s.add_argument("rules"); s.add_argument("out"); s.set_defaults(fn=cmd_retarget)
    s = sub.add_parser("mutants"); s.add_argument("rules"); s.add_argument("tests"); s.add_argument("spec"); s.add_argument("work")
    s.add_argument("--promtool", default="promtool"); s.set_defaults(fn=cmd_mutants)
    s = sub.add_parser("dashboard"); s.add_argument("dashboard"); s.add_argument("out_rules"); s.add_argument("out_queries"); s.set_defaults(fn=cmd_dashboard)
    s = sub.add_parser("promconfig"); s.add_argument("scrape"); s.add_argument("root"); s.add_argument("out")
    s.add_argument("--rule-file", action="append", default=[]); s.add_argument("--create-secrets", action="store_true"); s.set_defaults(fn=cmd_promconfig)
    s = sub.add_parser("liveconfig"); s.add_argument("scrape"); s.add_argument("rules"); s.add_argument("dash_rules"); s.add_argument("root")
    s.add_argument("api_port"); s.add_argument("out"); s.add_argument("out_rules"); s.set_defaults(fn=cmd_liveconfig)
    s = sub.add_parser("live"); s.add_argument("port"); s.add_argument("rules"); s.add_argument("queries"); s.add_argument("expect"); s.set_defaults(fn=cmd_live)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
