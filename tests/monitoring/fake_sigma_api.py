#!/usr/bin/env python3
"""A stand-in for sigma-api's Prometheus service discovery and for the VPS metrics endpoints,
on 127.0.0.1 only, for scripts/test-monitoring's live Prometheus run.

It binds four ephemeral loopback ports and writes them as JSON to --ports-file:
  api    GET /api/prometheus/targets?kind=node|agent|envoy  (Bearer --sd-token-file, else 401)
         GET /metrics  sigma-api's own metrics               (same token)
  node   GET /metrics  node_exporter-like
  agent  GET /metrics  sigma-agent metrics                   (Bearer --agent-token-file, else 401)
  envoy  GET <any path> pilot-agent's merged Istio/Envoy metrics, per VPS by path
It also writes --expect-file: what Prometheus should end up with (read by check.py live).
"""
import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

START = time.time()

VPS = [
    # (vps_id, hostname, purpose, status, envoy metrics path from SD or None)
    ("1", "node-1.example.net", "xrayr", "active", "/stats/prometheus"),
    ("2", "exit-1.example.net", "vpn-exit", "provisioning", None),
    ("3", "node-3.example.net", "xrayr", "active", "/custom/stats/prometheus"),
]
RETIRED = ("9", "old-1.example.net", "xrayr", "retired", None)


def workload(hostname):
    return "vps-" + hostname.replace(".", "-")


def labels(v, kind):
    vps_id, hostname, purpose, status, _ = v
    out = {
        "vps_id": vps_id, "hostname": hostname, "alias": hostname.split(".")[0],
        "provider": "example", "country": "DE", "city": "Falkenstein", "purpose": purpose,
        "status": status, "tags": "fast,ipv6", "sigma_target_kind": kind,
    }
    if kind == "envoy":
        out["workload_entry"] = workload(hostname)
    return out


def targets(kind, ports):
    out = []
    for v in VPS + [RETIRED]:
        # each VPS has its own loopback address (127.0.0.<id+1>), as each VPS has its own IP
        t = {"targets": [f"127.0.0.{int(v[0]) + 1}:{ports[kind]}"], "labels": labels(v, kind)}
        if kind == "envoy" and v[4]:
            t["labels"]["__metrics_path__"] = v[4]
        out.append(t)
    # a mislabelled target that the job's relabeling must drop
    wrong = {"targets": [f"127.0.0.50:{ports[kind]}"], "labels": labels(VPS[0], "node" if kind != "node" else "agent")}
    wrong["labels"]["hostname"] = f"wrong-kind-{kind}.example.net"
    out.append(wrong)
    return out


def envoy_metrics(hostname):
    t = time.time() - START
    n = int(t * 3) + 1  # a request every third of a second
    wl = workload(hostname)
    xb = f'reporter="source",source_workload="{wl}",source_app="xrayr",destination_service_name="xboard",destination_service_namespace="sigma",destination_app="xboard",response_flags="-",connection_security_policy="unknown"'
    lines = [
        "# TYPE istio_requests_total counter",
        f'istio_requests_total{{{xb},response_code="200"}} {n}',
        "# TYPE istio_request_duration_milliseconds histogram",
    ]
    for le, c in (("50", n), ("100", n), ("+Inf", n)):
        lines.append(f'istio_request_duration_milliseconds_bucket{{{xb},response_code="200",le="{le}"}} {c}')
    lines += [
        f'istio_request_duration_milliseconds_sum{{{xb},response_code="200"}} {n * 40}',
        f'istio_request_duration_milliseconds_count{{{xb},response_code="200"}} {n}',
        "# TYPE istio_request_bytes histogram",
        f'istio_request_bytes_bucket{{{xb},response_code="200",le="+Inf"}} {n}',
        f'istio_request_bytes_sum{{{xb},response_code="200"}} {n * 100}',
        f'istio_request_bytes_count{{{xb},response_code="200"}} {n}',
        "# TYPE istio_tcp_sent_bytes_total counter",
        f'istio_tcp_sent_bytes_total{{reporter="source",source_workload="{wl}",destination_service_name="exit-pool"}} {n * 1000}',
        "# TYPE istio_agent_cert_expiry_seconds gauge",
        f'istio_agent_cert_expiry_seconds{{resource_name="default"}} {86400 - t}',
        "# TYPE envoy_listener_manager_lds_update_rejected counter",
        "envoy_listener_manager_lds_update_rejected{} 0",
        "# TYPE envoy_cluster_manager_cds_update_rejected counter",
        "envoy_cluster_manager_cds_update_rejected{} 0",
    ]
    return "\n".join(lines) + "\n"


AGENT = """# TYPE sigma_agent_heartbeats counter
sigma_agent_heartbeats_total{{result="ok"}} {n}
# TYPE sigma_agent_last_heartbeat_success_timestamp_seconds gauge
sigma_agent_last_heartbeat_success_timestamp_seconds {now}
# TYPE sigma_agent_key_rejected gauge
sigma_agent_key_rejected 0
# TYPE sigma_agent_xds_nacks counter
sigma_agent_xds_nacks_total 0
# EOF
"""

API = """# TYPE sigma_api_vps gauge
sigma_api_vps{{status="active"}} 2
sigma_api_vps{{status="provisioning"}} 1
# TYPE sigma_api_agent_heartbeats counter
sigma_api_agent_heartbeats_total{{result="ok"}} {n}
# TYPE sigma_api_mesh_passes counter
sigma_api_mesh_passes_total{{result="ok"}} {n}
# TYPE sigma_api_mesh_vps gauge
sigma_api_mesh_vps{{status="synced"}} 3
# EOF
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sd-token-file", required=True)
    p.add_argument("--agent-token-file", required=True)
    p.add_argument("--ports-file", required=True)
    p.add_argument("--expect-file", required=True)
    args = p.parse_args()
    sd_token = open(args.sd_token_file).read().strip()
    agent_token = open(args.agent_token_file).read().strip()
    ports = {}

    def handler(role):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send(self, code, body, ctype="text/plain; version=0.0.4"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorized(self, token):
                return self.headers.get("Authorization") == f"Bearer {token}"

            def do_GET(self):
                u = urlsplit(self.path)
                n = int(time.time() - START) + 1
                host_id = int(self.headers.get("Host", "127.0.0.2").split(":")[0].split(".")[-1]) - 1
                vps = next((v for v in VPS + [RETIRED] if int(v[0]) == host_id), VPS[0])
                if role == "api":
                    if not self.authorized(sd_token):
                        return self.send(401, "unauthorized\n")
                    if u.path == "/api/prometheus/targets":
                        kind = parse_qs(u.query).get("kind", [""])[0]
                        if kind not in ("node", "agent", "envoy"):
                            return self.send(422, "kind\n")
                        return self.send(200, json.dumps(targets(kind, ports)), "application/json")
                    if u.path == "/metrics":
                        return self.send(200, API.format(n=n), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                elif role == "node" and u.path == "/metrics":
                    return self.send(200, "# TYPE node_load1 gauge\nnode_load1 0.5\n")
                elif role == "agent" and u.path == "/metrics":
                    if not self.authorized(agent_token):
                        return self.send(401, "unauthorized\n")
                    return self.send(200, AGENT.format(n=n, now=time.time()), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                elif role == "envoy":
                    want = vps[4] or "/stats/prometheus"
                    if u.path == want:
                        return self.send(200, envoy_metrics(vps[1]))
                return self.send(404, "not found\n")
        return H

    servers = {}
    for role in ("api", "node", "agent", "envoy"):
        s = ThreadingHTTPServer(("127.0.0.1", 0), handler(role))
        servers[role] = s
        ports[role] = s.server_address[1]
    # the per-VPS target addresses 127.0.0.2.. need their own sockets on the same ports
    extra = []
    for v in VPS + [RETIRED]:
        for role in ("node", "agent", "envoy"):
            s = ThreadingHTTPServer((f"127.0.0.{int(v[0]) + 1}", ports[role]), handler(role))
            extra.append(s)
    for s in list(servers.values()) + extra:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    listed = [v for v in VPS]
    expect = {
        "active": {"sigma-node": len(listed), "sigma-agent": len(listed), "sigma-envoy": len(listed), "sigma-api": 1},
        "dropped": [RETIRED[1]] + [f"wrong-kind-{k}.example.net" for k in ("node", "agent", "envoy")],
        "envoy_paths": {workload(v[1]): (v[4] or "/stats/prometheus") for v in listed},
        "mesh_info": [[workload(v[1]), v[1]] for v in listed],
        "polling": [workload(v[1]) for v in listed],
    }
    with open(args.expect_file, "w") as f:
        json.dump(expect, f)
    with open(args.ports_file + ".tmp", "w") as f:
        json.dump(ports, f)
    os.replace(args.ports_file + ".tmp", args.ports_file)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
