//! End-to-end tests: the real `sigmactl` binary against a real sigma-api (SQLite) started by
//! each test.

use serde_json::{Value, json};
use sigma_testkit::ctl::{Ctl, Run, assert_aligned};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TempDir};
use sigma_types::{ApiKey, EnvoyRoute, List, Provider, Purpose, Vps};

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["hostname"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn vps_lifecycle_end_to_end() {
    let api = SigmaApi::start();
    api.ctl()
        .run(&["providers", "create", "Hetzner", "--country", "de"])
        .ok();
    let created = api.ctl_json(&[
        "vps",
        "create",
        "Edge-1.Example.net",
        "--purpose",
        "xrayr",
        "--provider",
        "hetzner",
        "--ip",
        "203.0.113.7",
        "--ip",
        "private=10.0.0.2",
        "--country",
        "de",
        "--city",
        "Falkenstein",
        "--alias",
        "e1",
        "--tag",
        "fast",
        "--tag",
        "env=prod",
        "--node-exporter-port",
        "9200",
    ]);
    let v: Vps = serde_json::from_value(created.clone()).unwrap();
    assert_eq!(v.hostname, "edge-1.example.net");
    assert_eq!(v.status.as_str(), "provisioning");
    assert_eq!(v.provider.as_deref(), Some("Hetzner"));
    assert_eq!(v.public_ip(), Some("203.0.113.7"));
    assert_eq!(v.tags, vec!["env=prod", "fast"]);
    assert_eq!(v.node_exporter_port, 9200);
    assert!(v.monitoring);
    api.ctl()
        .run(&[
            "vps",
            "create",
            "relay-1.example.net",
            "--purpose",
            "vpn-relay",
            "--country",
            "FR",
            "--status",
            "active",
            "--monitoring",
            "false",
        ])
        .ok();

    // Show by hostname and by id: the same object as created.
    let by_name = api.ctl_json(&["vps", "show", "edge-1.example.net"]);
    assert_eq!(by_name, created, "-o json is the API's object");
    let by_id = api.ctl_json(&["vps", "show", &v.id.to_string()]);
    assert_eq!(by_id, created);
    let human = api.ctl().run(&["vps", "show", "EDGE-1.example.net"]);
    human.ok();
    assert!(human.stdout.contains("Hostname:"), "{}", human.stdout);
    assert!(human.stdout.contains("10.0.0.2 (private)"));
    assert!(human.stdout.contains("node-exporter on port 9200"));

    // Filters.
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "--country", "FR"])),
        ["relay-1.example.net"]
    );
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "--tag", "fast"])),
        ["edge-1.example.net"]
    );
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "--status", "active"])),
        ["relay-1.example.net"]
    );
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "-q", "falken"])),
        ["edge-1.example.net"]
    );
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "--provider", "hetzner", "--purpose", "xrayr"])),
        ["edge-1.example.net"]
    );
    assert_eq!(api.ctl_json(&["vps", "list"])["total"], 2);

    // Edit: only the given fields change; --clear-* sends null.
    let e = api.ctl_json(&[
        "vps",
        "edit",
        "edge-1.example.net",
        "--clear-alias",
        "--clear-city",
        "--tag",
        "slow",
        "--monitoring",
        "false",
    ]);
    assert_eq!(e["alias"], Value::Null);
    assert_eq!(e["city"], Value::Null);
    assert_eq!(e["tags"], json!(["slow"]));
    assert_eq!(e["monitoring"], false);
    assert_eq!(e["country"], "DE", "absent fields stay");
    assert_eq!(e["provider"], "Hetzner");
    let e = api.ctl_json(&[
        "vps",
        "edit",
        "edge-1.example.net",
        "--clear-ips",
        "--clear-tags",
    ]);
    assert_eq!(e["ip_addresses"], json!([]));
    assert_eq!(e["tags"], json!([]));
    let e = api.ctl_json(&[
        "vps",
        "edit",
        "edge-1.example.net",
        "--hostname",
        "edge-2.example.net",
    ]);
    assert_eq!(e["hostname"], "edge-2.example.net");

    // Retire (retiring until its agent reports), force-retire, re-commission.
    let r = api.ctl().run(&["vps", "retire", "relay-1.example.net"]);
    r.ok();
    assert!(r.stdout.contains("is retiring"), "{}", r.stdout);
    let r = api.ctl_json(&["vps", "retire", "relay-1.example.net", "--force"]);
    assert_eq!(r["status"], "retired");
    let r = api.ctl_json(&[
        "vps",
        "edit",
        "relay-1.example.net",
        "--status",
        "provisioning",
    ]);
    assert_eq!(r["status"], "provisioning");

    // Delete (soft) and restore by hostname.
    let d = api.ctl().run(&["vps", "delete", "edge-2.example.net"]);
    d.ok();
    assert!(d.stdout.contains("sigmactl vps restore"), "{}", d.stdout);
    api.ctl().run(&["vps", "show", "edge-2.example.net"]).fails(
        1,
        &[
            "no VPS has hostname",
            "deleted ones had it",
            &v.id.to_string(),
        ],
    );
    assert_eq!(
        ids(&api.ctl_json(&["vps", "list", "--status", "deleted"])),
        ["edge-2.example.net"]
    );
    let r = api.ctl().run(&["vps", "restore", "edge-2.example.net"]);
    r.ok();
    assert!(
        r.stdout.contains("restored; it is provisioning"),
        "{}",
        r.stdout
    );

    // Two deleted VPS with one hostname: restore by hostname is ambiguous, by id it works.
    api.ctl().run(&["vps", "delete", "edge-2.example.net"]).ok();
    let second = api.ctl_json(&["vps", "create", "edge-2.example.net", "--purpose", "xrayr"]);
    api.ctl().run(&["vps", "delete", "edge-2.example.net"]).ok();
    api.ctl()
        .run(&["vps", "restore", "edge-2.example.net"])
        .fails(1, &["2 deleted VPS had hostname", &v.id.to_string()]);
    let r = api.ctl_json(&["vps", "restore", second["id"].as_str().unwrap()]);
    assert_eq!(r["id"], second["id"]);
    api.ctl()
        .run(&["vps", "restore", "nothing.example"])
        .fails(1, &["no deleted VPS has hostname"]);
}

#[test]
fn providers_and_purposes_with_mesh_settings() {
    let api = SigmaApi::start();
    let p = api.ctl_json(&[
        "providers",
        "create",
        "OVH",
        "--country",
        "fr",
        "--website",
        "https://ovh.com",
        "--notes",
        "cheap",
    ]);
    let p: Provider = serde_json::from_value(p).unwrap();
    assert_eq!(p.country.as_deref(), Some("FR"));
    let shown = api.ctl_json(&["providers", "show", &p.id.to_string()]);
    assert_eq!(shown["name"], "OVH");
    let e = api.ctl_json(&[
        "providers",
        "edit",
        "ovh",
        "--clear-website",
        "--name",
        "OVHcloud",
    ]);
    assert_eq!(e["website"], Value::Null);
    assert_eq!(e["notes"], "cheap", "absent fields stay");
    assert_eq!(e["name"], "OVHcloud");
    let l = api.ctl().run(&["providers", "list"]);
    l.ok();
    let rows = assert_aligned(&l.stdout);
    assert_eq!(rows[0], ["NAME", "COUNTRY", "VPS", "WEBSITE"]);
    assert_eq!(rows[1], ["OVHcloud", "FR", "0", "-"]);

    // In use: 409 with the API's reason; once unused it goes.
    api.ctl()
        .run(&[
            "vps",
            "create",
            "a.example",
            "--purpose",
            "xrayr",
            "--provider",
            "OVHcloud",
        ])
        .ok();
    api.ctl()
        .run(&["providers", "delete", "ovhcloud"])
        .fails(1, &["conflict (HTTP 409)", "1 VPS"]);
    api.ctl()
        .run(&["vps", "edit", "a.example", "--clear-provider"])
        .ok();
    let d = api.ctl().run(&["providers", "delete", "ovhcloud"]);
    d.ok();
    assert!(d.stdout.contains("deleted"));
    api.ctl()
        .run(&["providers", "show", "ovhcloud"])
        .fails(1, &["not found (HTTP 404)"]);

    // Purposes: mesh settings from a YAML file, inline JSON, and standard input.
    let dir = TempDir::new("mesh");
    let yaml = dir.write(
        "mesh.yaml",
        "enabled: true\nservice_account: edge\nports:\n  - name: http-api\n    number: 8080\n    protocol: HTTP\ninterception:\n  mode: none\n",
        0o644,
    );
    let c = api.ctl_json(&[
        "purposes",
        "create",
        "edge",
        "--display-name",
        "Edge",
        "--mesh-file",
        yaml.to_str().unwrap(),
    ]);
    assert_eq!(c["mesh"]["enabled"], true);
    assert_eq!(c["mesh"]["service_account"], "edge");
    assert_eq!(c["mesh"]["ports"][0]["number"], 8080);
    let shown: Purpose =
        serde_json::from_value(api.ctl_json(&["purposes", "show", "edge"])).unwrap();
    assert_eq!(shown.display_name, "Edge");
    assert_eq!(shown.mesh, c["mesh"]);
    // The mesh of `-o json` applies as it is to another purpose (round trip).
    let json_file = dir.write("mesh.json", &shown.mesh.to_string(), 0o644);
    let c2 = api.ctl_json(&[
        "purposes",
        "create",
        "edge2",
        "--mesh-file",
        json_file.to_str().unwrap(),
    ]);
    assert_eq!(c2["mesh"], shown.mesh);
    assert_eq!(c2["display_name"], "edge2");
    let e = api.ctl_json(&[
        "purposes",
        "edit",
        "edge",
        "--mesh",
        r#"{"enabled": false}"#,
    ]);
    assert_eq!(e["mesh"]["enabled"], false);
    assert!(e["mesh"].get("ports").is_none(), "mesh replaced whole: {e}");
    assert_eq!(e["display_name"], "Edge", "absent fields stay");
    let r = api
        .ctl()
        .stdin("{\"enabled\": false, \"service_account\": \"other\"}")
        .run(&[
            "-o",
            "json",
            "purposes",
            "edit",
            "edge2",
            "--mesh-file",
            "-",
        ]);
    r.ok();
    let edited: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(edited["mesh"]["service_account"], "other");
    let human = api.ctl().run(&["purposes", "show", "edge"]);
    human.ok();
    assert!(
        human.stdout.contains("\"enabled\": false"),
        "{}",
        human.stdout
    );
    // Bad mesh settings: the API names the field; bad local input names the file.
    api.ctl()
        .run(&["purposes", "edit", "edge", "--mesh", "[1]"])
        .fails(1, &["invalid input (HTTP 422)", "\n  mesh"]);
    api.ctl()
        .run(&["purposes", "edit", "edge", "--mesh", "{"])
        .fails(1, &["--mesh: not valid JSON"]);
    let bad = dir.write("bad.yaml", "a: [", 0o644);
    api.ctl()
        .run(&[
            "purposes",
            "create",
            "x",
            "--mesh-file",
            bad.to_str().unwrap(),
        ])
        .fails(1, &["bad.yaml: not valid YAML"]);
    api.ctl()
        .run(&["purposes", "delete", "xrayr"])
        .fails(1, &["conflict (HTTP 409)"]);
    api.ctl().run(&["purposes", "delete", "edge2"]).ok();
    let names: Vec<String> = api.ctl_json(&["purposes", "list"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"edge".to_string()) && !names.contains(&"edge2".to_string()));
}

#[test]
fn keys_and_enrollment_tokens() {
    let api = SigmaApi::start();
    // A key is printed once, works, and is listed without its secret.
    let r = api
        .ctl()
        .run(&["keys", "create", "ci", "--role", "readonly", "--ttl", "30d"]);
    r.ok();
    let key_line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("sgm_"))
        .expect("the key is printed");
    assert!(r.stdout.contains("shown once"));
    assert!(r.stdout.contains("Role:") && r.stdout.contains("readonly"));
    let ro = key_line.trim().to_string();
    api.ctl()
        .env("SIGMA_API_KEY", &ro)
        .run(&["vps", "list"])
        .ok();
    let list = api.ctl_json(&["keys", "list"]);
    let keys: List<ApiKey> = serde_json::from_value(list.clone()).unwrap();
    assert_eq!(keys.total, 2);
    assert!(!list.to_string().contains(&ro), "secrets are never listed");
    let ci = keys.items.iter().find(|k| k.name == "ci").unwrap();
    assert!(ci.expires_at.is_some());

    // Agent keys are bound to a VPS named by hostname.
    api.ctl()
        .run(&["vps", "create", "a1.example", "--purpose", "xrayr"])
        .ok();
    let vps_id = api.ctl_json(&["vps", "show", "a1.example"])["id"].clone();
    let ag = api.ctl_json(&[
        "keys",
        "create",
        "agent",
        "--role",
        "agent",
        "--vps",
        "a1.example",
    ]);
    assert_eq!(ag["api_key"]["vps_id"], vps_id);
    api.ctl()
        .run(&["keys", "create", "agent2", "--role", "agent"])
        .fails(1, &["vps_id: an agent key must be bound to a VPS"]);

    // Revoke by prefix: the key stops working with a 401 that says to check it.
    let r = api.ctl().run(&["keys", "revoke", &ci.prefix]);
    r.ok();
    assert!(r.stdout.contains("revoked"));
    api.ctl()
        .env("SIGMA_API_KEY", &ro)
        .run(&["vps", "list"])
        .fails(
            1,
            &[
                "unauthorized (HTTP 401)",
                "Check your API key",
                "SIGMA_API_KEY",
            ],
        );
    api.ctl()
        .run(&["keys", "revoke", "sgm_ffffffff"])
        .fails(1, &["no API key has id or prefix"]);

    // Enrollment: the token and a one-line install command, printed once.
    let r = api.ctl().run(&[
        "enroll",
        "create",
        "--name",
        "batch-1",
        "--max-uses",
        "3",
        "--purpose",
        "vpn-exit",
        "--country",
        "NL",
        "--tag",
        "wave=1",
        "--ttl",
        "2h",
        "--cost",
        "4.99",
        "--currency",
        "EUR",
        "--billing-cycle",
        "monthly",
    ]);
    r.ok();
    let token = r
        .stdout
        .lines()
        .find(|l| l.starts_with("sge_"))
        .expect("the token is printed")
        .trim()
        .to_string();
    let install = format!(
        "curl -fsSL {url}/install.sh | SIGMA_API_URL={url} SIGMA_ENROLLMENT_TOKEN={token} sh",
        url = api.url
    );
    assert!(r.stdout.contains(&install), "{}", r.stdout);
    let r = api.ctl().run(&[
        "enroll",
        "create",
        "--agent-api-url",
        "https://sigma.example.net/",
    ]);
    r.ok();
    assert!(
        r.stdout.contains("curl -fsSL https://sigma.example.net/install.sh | SIGMA_API_URL=https://sigma.example.net SIGMA_ENROLLMENT_TOKEN=sge_"),
        "{}",
        r.stdout
    );

    // The token enrolls an agent, with the presets.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/agent/register", api.url))
            .bearer_auth(&token)
            .json(&json!({"hostname": "exit-1.example.net"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200, "the token enrolls");
    let v = api.ctl_json(&["vps", "show", "exit-1.example.net"]);
    assert_eq!(v["purpose"], "vpn-exit");
    assert_eq!(v["country"], "NL");
    assert_eq!(v["status"], "active");
    assert_eq!(v["contract"]["currency"], "EUR", "the contract preset: {v}");
    assert_eq!(v["contract"]["billing_cycle"], "monthly", "{v}");
    // A contract the API refuses is named at its field; a clear has nothing to clear.
    api.ctl()
        .run(&["enroll", "create", "--currency", "EURO"])
        .fails(1, &["contract.currency"]);
    api.ctl()
        .run(&["enroll", "create", "--clear-contract", "cost"])
        .fails(2, &["no contract to clear"]);

    let l = api.ctl().run(&["enroll", "list"]);
    l.ok();
    let rows = assert_aligned(&l.stdout);
    assert_eq!(
        rows[0],
        ["PREFIX", "NAME", "STATE", "USES", "PRESETS", "EXPIRES"]
    );
    let batch = rows.iter().find(|r| r[1] == "batch-1").unwrap();
    assert_eq!(batch[2], "active");
    assert_eq!(batch[3], "1/3");
    assert_eq!(batch[4], "purpose=vpn-exit country=NL tags=wave=1");
    let r = api.ctl().run(&["enroll", "revoke", &token[..12]]);
    r.ok();
    let tokens = api.ctl_json(&["enroll", "list"]);
    let revoked = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "batch-1")
        .unwrap();
    assert!(revoked["revoked_at"].is_string());
}

#[test]
fn envoy_routes_end_to_end() {
    let api = SigmaApi::start();
    for h in ["edge-1.example.net", "edge-2.example.net"] {
        api.ctl()
            .run(&["vps", "create", h, "--purpose", "xrayr"])
            .ok();
    }
    let a = api.ctl_json(&[
        "routes",
        "add",
        "edge-1.example.net",
        "https",
        "--listen-port",
        "443",
        "--backend-host",
        "10.0.0.9",
        "--backend-port",
        "8443",
    ]);
    assert_eq!(a["cluster_type"], "static");
    assert_eq!(a["connect_timeout_ms"], 5000);
    let b = api.ctl_json(&[
        "routes",
        "add",
        "edge-1.example.net",
        "db",
        "--listen-port",
        "5432",
        "--backend-host",
        "DB.example.com",
        "--backend-port",
        "5432",
        "--proxy-protocol",
        "v2",
        "--connect-timeout-ms",
        "2000",
    ]);
    assert_eq!(b["cluster_type"], "strict_dns");
    assert_eq!(b["backend_host"], "db.example.com");

    // Conflicts and invalid routes are explained.
    api.ctl()
        .run(&[
            "routes",
            "add",
            "edge-1.example.net",
            "other",
            "--listen-port",
            "443",
            "--backend-host",
            "10.0.0.1",
            "--backend-port",
            "1",
        ])
        .fails(1, &["conflict (HTTP 409)", "443"]);
    api.ctl()
        .run(&[
            "routes",
            "add",
            "edge-1.example.net",
            "Bad Name",
            "--listen-port",
            "1",
            "--backend-host",
            "a.example",
            "--backend-port",
            "1",
            "--cluster-type",
            "static",
            "--connect-timeout-ms",
            "0",
        ])
        .fails(
            1,
            &[
                "invalid input (HTTP 422)",
                "  name: ",
                "  backend_host: ",
                "  connect_timeout_ms: ",
            ],
        );

    let l = api.ctl().run(&["routes", "list", "edge-1.example.net"]);
    l.ok();
    let rows = assert_aligned(&l.stdout);
    assert_eq!(
        rows[0],
        [
            "NAME", "LISTEN", "BACKEND", "CLUSTER", "TIMEOUT", "PROXY", "STATUS", "RUNS", "LIVE"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "db",
            "5432",
            "db.example.com:5432",
            "strict_dns",
            "2000ms",
            "v2",
            "active",
            "classic",
            // No agent has reported on this VPS's Envoy.
            "?"
        ]
    );

    // A plan: today sigma-agent's Envoy runs both; in mesh mode neither would forward (the VPS
    // is not active, so it gets no mesh identity), which the plan names and exits 1 for.
    let p = api.ctl().run(&["routes", "plan", "edge-1.example.net"]);
    p.ok();
    let rows = assert_aligned(&p.stdout);
    assert_eq!(rows[0], ["NAME", "LISTEN", "BACKEND", "RUNS", "DETAIL"]);
    assert_eq!(rows.len(), 3, "{}", p.stdout);
    assert!(rows[1..].iter().all(|r| r[3] == "classic"), "{}", p.stdout);
    api.ctl()
        .run(&["routes", "plan", "edge-1.example.net", "--mode", "mesh"])
        .fails(
            1,
            &["2 route(s) of edge-1.example.net would not forward in mesh mode"],
        );
    let j = api.ctl().run(&[
        "-o",
        "json",
        "routes",
        "plan",
        "edge-1.example.net",
        "--mode",
        "mesh",
    ]);
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["routes"][0]["runs"], "not_carried", "{v}");
    assert_eq!(v["routes"][0]["issues"][0]["code"], "vps_not_meshed", "{v}");
    api.ctl()
        .run(&["routes", "plan", "edge-1.example.net", "--mode", "sideways"])
        .fails(2, &["sideways"]);

    // Edit by VPS and name, and by id.
    let e = api.ctl_json(&[
        "routes",
        "edit",
        "edge-1.example.net",
        "https",
        "--listen-port",
        "8443",
        "--status",
        "disabled",
    ]);
    assert_eq!(e["listen_port"], 8443);
    assert_eq!(e["status"], "disabled");
    assert_eq!(e["backend_port"], 8443, "absent fields stay");
    let e = api.ctl_json(&[
        "routes",
        "edit",
        a["id"].as_str().unwrap(),
        "--backend-host",
        "origin.example.com",
    ]);
    assert_eq!(e["cluster_type"], "strict_dns", "type follows the new host");
    api.ctl()
        .run(&[
            "routes",
            "edit",
            "edge-1.example.net",
            "nope",
            "--status",
            "active",
        ])
        .fails(1, &["has no route named \"nope\"", "db, https"]);

    // `routes list -o yaml` applies as it is to another VPS (round trip).
    let dir = TempDir::new("routes");
    let y = api
        .ctl()
        .run(&["-o", "yaml", "routes", "list", "edge-1.example.net"]);
    y.ok();
    let file = dir.write("routes.yaml", &y.stdout, 0o644);
    let applied = api.ctl_json(&[
        "routes",
        "apply",
        "edge-2.example.net",
        "-f",
        file.to_str().unwrap(),
    ]);
    let strip = |v: &Value| -> Vec<Value> {
        let mut out: Vec<Value> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                for f in ["id", "vps_id", "created_at", "updated_at"] {
                    r.as_object_mut().unwrap().remove(f);
                }
                r
            })
            .collect();
        out.sort_by_key(|r| r["name"].as_str().unwrap().to_string());
        out
    };
    let source = api.ctl_json(&["routes", "list", "edge-1.example.net"]);
    assert_eq!(strip(&applied), strip(&source));
    let listed: Vec<EnvoyRoute> =
        serde_json::from_value(api.ctl_json(&["routes", "list", "edge-2.example.net"])).unwrap();
    assert_eq!(listed.len(), 2);
    let v2 = api.ctl_json(&["vps", "show", "edge-2.example.net"]);
    assert_eq!(v2["envoy_version"], 1, "one batch, one version");

    // Apply with --prune keeps only the named routes.
    let one = dir.write(
        "one.json",
        r#"{"routes": [{"name": "db", "listen_port": 15432, "backend_host": "10.1.1.1", "backend_port": 5432}]}"#,
        0o644,
    );
    let r = api.ctl().run(&[
        "routes",
        "apply",
        "edge-2.example.net",
        "-f",
        one.to_str().unwrap(),
        "--prune",
    ]);
    r.ok();
    let rows = assert_aligned(&r.stdout);
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    assert_eq!(rows[1][0], "db");
    assert_eq!(rows[1][1], "15432");
    let bad = dir.write(
        "bad.json",
        r#"[{"name": "x", "listen_port": 1, "backend_host": "h", "backend_port": 2, "colour": 1}]"#,
        0o644,
    );
    api.ctl()
        .run(&[
            "routes",
            "apply",
            "edge-2.example.net",
            "-f",
            bad.to_str().unwrap(),
        ])
        .fails(1, &["bad.json: routes[0]", "colour"]);

    // Remove by VPS and name, then by id.
    let r = api.ctl().run(&["routes", "rm", "edge-2.example.net", "db"]);
    r.ok();
    assert!(r.stdout.contains("removed"));
    api.ctl()
        .run(&["routes", "rm", b["id"].as_str().unwrap()])
        .ok();
    let left = api.ctl_json(&["routes", "list", "edge-1.example.net"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    let empty = api.ctl().run(&["routes", "list", "edge-2.example.net"]);
    empty.ok();
    assert!(empty.stdout.is_empty());
    assert!(empty.stderr.contains("no routes on edge-2.example.net"));
    api.ctl()
        .run(&["routes", "rm", "not-a-uuid"])
        .fails(2, &["is not a route id"]);
}

#[test]
fn audit_log_with_filters() {
    let api = SigmaApi::start();
    api.ctl()
        .run(&["vps", "create", "a.example", "--purpose", "xrayr"])
        .ok();
    api.ctl()
        .run(&["vps", "create", "b.example", "--purpose", "xrayr"])
        .ok();
    api.ctl().run(&["providers", "create", "ovh"]).ok();
    api.ctl().run(&["vps", "delete", "b.example"]).ok();

    let all = api.ctl_json(&["audit", "--all"]);
    let actions: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "vps.delete", "newest first: {actions:?}");
    let creates = api.ctl_json(&["audit", "--action", "vps.create"]);
    assert_eq!(creates["total"], 2);
    let prov = api.ctl_json(&["audit", "--resource-type", "provider", "--since", "1h"]);
    assert_eq!(prov["total"], 1);
    assert_eq!(prov["items"][0]["after"]["name"], "ovh");
    let none = api.ctl_json(&["audit", "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(none["total"], 0);
    let actor = format!("key:{}", &ADMIN_KEY[..12]);
    let mine = api.ctl_json(&["audit", "--actor", &actor, "--all"]);
    assert!(mine["total"].as_i64().unwrap() >= 4, "{mine}");
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == actor.as_str())
    );

    let t = api.ctl().run(&["audit", "--limit", "2"]);
    t.ok();
    let rows = assert_aligned(&t.stdout);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0], ["ID", "AT", "ACTOR", "ACTION", "RESOURCE"]);
    assert_eq!(rows[1][3], "vps.delete");
    assert!(rows[1][4].starts_with("vps/"));
    assert!(
        t.stderr
            .contains(&format!("2 of {} audit entries shown", all["total"])),
        "{}",
        t.stderr
    );
    api.ctl()
        .run(&["audit", "--since", "yesterday"])
        .fails(2, &["is neither an RFC 3339 time"]);

    let op = api.ctl_key("operator");
    api.ctl()
        .env("SIGMA_API_KEY", &op)
        .run(&["audit"])
        .fails(1, &["forbidden (HTTP 403)", "role may not", "operator"]);
}

#[test]
fn errors_name_their_cause_with_exit_codes() {
    let api = SigmaApi::start();
    // 422: every field with its reason.
    api.ctl()
        .run(&[
            "vps",
            "create",
            "bad_host",
            "--purpose",
            "X",
            "--country",
            "XX",
        ])
        .fails(
            1,
            &[
                "invalid input (HTTP 422)",
                "\n  country: ",
                "\n  hostname: ",
                "\n  purpose: ",
            ],
        );
    // 403 with the role.
    let ro = api.ctl_key("readonly");
    api.ctl()
        .env("SIGMA_API_KEY", &ro)
        .run(&["providers", "create", "x"])
        .fails(
            1,
            &[
                "forbidden (HTTP 403)",
                "readonly",
                "Your key's role may not do this",
            ],
        );
    // 401 for an unknown key.
    let r = api
        .ctl()
        .env(
            "SIGMA_API_KEY",
            "sgm_12345678_not-a-real-key-at-all-0123456789",
        )
        .run(&["vps", "list"]);
    r.fails(1, &["unauthorized (HTTP 401)", "Check your API key"]);
    assert!(r.stdout.is_empty());
    // 404.
    api.ctl()
        .run(&["purposes", "show", "nope"])
        .fails(1, &["not found (HTTP 404)"]);
    api.ctl()
        .run(&["vps", "show", "00000000-0000-0000-0000-000000000001"])
        .fails(1, &["not found (HTTP 404)"]);
    // 409.
    api.ctl()
        .run(&["vps", "create", "x.example", "--purpose", "xrayr"])
        .ok();
    api.ctl()
        .run(&["vps", "create", "X.example", "--purpose", "xrayr"])
        .fails(1, &["conflict (HTTP 409)"]);

    // Usage errors: exit code 2, nothing sent.
    api.ctl()
        .run(&["vps", "edit", "x.example"])
        .fails(2, &["required"]);
    api.ctl()
        .run(&["vps", "edit", "x.example", "--alias", "a", "--clear-alias"])
        .fails(2, &["cannot be used with"]);
    api.ctl()
        .run(&["vps", "list", "--status", "gone"])
        .fails(2, &["invalid value"]);
    api.ctl().run(&["vps", "frobnicate"]).fails(2, &[]);
    api.ctl()
        .run(&[
            "vps",
            "create",
            "y.example",
            "--purpose",
            "xrayr",
            "--ip",
            "1.2.3",
        ])
        .fails(2, &["is not an IPv4 or IPv6 address"]);
    api.ctl()
        .run(&["keys", "create", "k", "--role", "readonly", "--ttl", "5y"])
        .fails(2, &["unknown unit"]);
    assert_eq!(
        api.ctl_json(&["vps", "list"])["total"],
        1,
        "nothing was created"
    );

    // Network errors name the URL and suggest --api-url.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");
    api.ctl()
        .run(&["--api-url", &url, "vps", "list"])
        .fails(1, &["could not reach sigma-api at", &url, "--api-url"]);
    // No key anywhere.
    api.ctl()
        .env_remove("SIGMA_API_KEY")
        .run(&["vps", "list"])
        .fails(1, &["no API key", "SIGMA_API_KEY", "[profiles.default]"]);
    api.ctl()
        .env("SIGMA_API_URL", "ftp://example")
        .run(&["vps", "list"])
        .fails(1, &["SIGMA_API_URL"]);
}

#[test]
fn config_file_profiles_and_permissions() {
    let api = SigmaApi::start();
    let home = TempDir::new("home");
    let xdg = home.path().join("xdg");
    // Default profile: a key file next to the config; `prod`: the key inline.
    home.write("xdg/sigma/admin.key", &format!("{ADMIN_KEY}\n"), 0o600);
    let cfg = home.write(
        "xdg/sigma/config.toml",
        &format!(
            "[profiles.default]\napi_url = \"{url}\"\napi_key_file = \"admin.key\"\n\n\
             [profiles.prod]\napi_url = \"{url}\"\napi_key = \"{ADMIN_KEY}\"\n\n\
             [profiles.elsewhere]\napi_url = \"http://127.0.0.1:1\"\napi_key = \"{ADMIN_KEY}\"\n",
            url = api.url
        ),
        0o644,
    );
    let ctl = || Ctl::new(home.path()).env("XDG_CONFIG_HOME", &xdg);

    // The file holds keys and others may read it: refused, naming chmod 600.
    ctl().run(&["vps", "list"]).fails(
        1,
        &[
            "group or others may read it",
            "chmod 600",
            cfg.to_str().unwrap(),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The default profile (its key from a file relative to the config).
    ctl().run(&["providers", "create", "from-default"]).ok();
    // --profile and SIGMA_PROFILE choose another; the flag wins over the variable.
    ctl()
        .run(&["--profile", "prod", "providers", "show", "from-default"])
        .ok();
    ctl()
        .env("SIGMA_PROFILE", "elsewhere")
        .run(&["vps", "list"])
        .fails(1, &["could not reach sigma-api at http://127.0.0.1:1/"]);
    ctl()
        .env("SIGMA_PROFILE", "elsewhere")
        .run(&["--profile", "prod", "vps", "list"])
        .ok();
    // The environment beats the profile; the flag beats the environment.
    ctl()
        .env("SIGMA_PROFILE", "elsewhere")
        .env("SIGMA_API_URL", &api.url)
        .run(&["vps", "list"])
        .ok();
    ctl()
        .env("SIGMA_API_URL", "http://127.0.0.1:1")
        .run(&["--api-url", &api.url, "vps", "list"])
        .ok();
    ctl()
        .env(
            "SIGMA_API_KEY",
            "sgm_12345678_wrong-key-wrong-key-wrong-key-0",
        )
        .run(&["vps", "list"])
        .fails(1, &["HTTP 401", "SIGMA_API_KEY"]);
    // An unknown profile is named with the ones there are.
    ctl()
        .run(&["--profile", "staging", "vps", "list"])
        .fails(1, &["\"staging\"", "default, elsewhere, prod"]);
    // --config (and SIGMA_CONFIG) name another file.
    let other = home.write(
        "other.toml",
        "[profiles.default]\napi_url = \"http://127.0.0.1:1\"\n",
        0o644,
    );
    Ctl::new(home.path())
        .env("SIGMA_API_KEY", ADMIN_KEY)
        .run(&["--config", other.to_str().unwrap(), "vps", "list"])
        .fails(1, &["could not reach sigma-api at http://127.0.0.1:1/"]);
    Ctl::new(home.path())
        .env("SIGMA_API_KEY", ADMIN_KEY)
        .env("SIGMA_CONFIG", home.path().join("absent.toml"))
        .run(&["vps", "list"])
        .fails(1, &["absent.toml"]);
    // Without XDG_CONFIG_HOME the file is under ~/.config.
    let h2 = TempDir::new("home2");
    h2.write(
        "home/.config/sigma/config.toml",
        &format!(
            "[profiles.default]\napi_url = \"{}\"\napi_key = \"{ADMIN_KEY}\"\n",
            api.url
        ),
        0o600,
    );
    Ctl::new(h2.path())
        .run(&["providers", "show", "from-default"])
        .ok();
}

#[test]
fn key_from_a_file() {
    let api = SigmaApi::start();
    let dir = TempDir::new("keyfile");
    let f = dir.write("key", &format!("  {ADMIN_KEY}\n"), 0o600);
    let base = || Ctl::new(dir.path()).env("SIGMA_API_URL", &api.url);
    base()
        .env("SIGMA_API_KEY_FILE", &f)
        .run(&["vps", "list"])
        .ok();
    base()
        .run(&["--api-key-file", f.to_str().unwrap(), "vps", "list"])
        .ok();
    // The flag beats the variables.
    base()
        .env(
            "SIGMA_API_KEY",
            "sgm_12345678_wrong-key-wrong-key-wrong-key-0",
        )
        .run(&["--api-key-file", f.to_str().unwrap(), "vps", "list"])
        .ok();
    base()
        .env("SIGMA_API_KEY", ADMIN_KEY)
        .env("SIGMA_API_KEY_FILE", &f)
        .run(&["vps", "list"])
        .fails(1, &["both SIGMA_API_KEY and SIGMA_API_KEY_FILE"]);
    base()
        .env("SIGMA_API_KEY_FILE", dir.path().join("missing"))
        .run(&["vps", "list"])
        .fails(1, &["missing"]);
    let empty = dir.write("empty", "\n", 0o600);
    base()
        .env("SIGMA_API_KEY_FILE", &empty)
        .run(&["vps", "list"])
        .fails(1, &["is empty"]);
    let wrong = dir.write(
        "wrong",
        "sgm_12345678_wrong-key-wrong-key-wrong-key-0",
        0o600,
    );
    base()
        .env("SIGMA_API_KEY_FILE", &wrong)
        .run(&["vps", "list"])
        .fails(1, &["HTTP 401", "SIGMA_API_KEY_FILE"]);
}

#[test]
fn tables_align_and_pages_are_noted() {
    let api = SigmaApi::start();
    for (h, c) in [
        ("a.example", "DE"),
        ("a-much-longer-hostname.example.net", "FR"),
        ("mid-size.example.org", "NL"),
    ] {
        api.ctl()
            .run(&[
                "vps",
                "create",
                h,
                "--purpose",
                "xrayr",
                "--country",
                c,
                "--ip",
                "192.0.2.1",
                "--tag",
                "t",
            ])
            .ok();
    }
    let t = api.ctl().run(&["vps", "list"]);
    t.ok();
    assert!(!t.stdout.contains('\x1b'), "no colour when not a terminal");
    let rows = assert_aligned(&t.stdout);
    assert_eq!(
        rows[0],
        [
            "HOSTNAME",
            "STATUS",
            "PURPOSE",
            "PROVIDER",
            "COUNTRY",
            "PUBLIC IP",
            "TAGS",
            "COST",
            "EXPIRES",
            "LAST SEEN"
        ]
    );
    assert_eq!(rows.len(), 4);
    let long = rows
        .iter()
        .find(|r| r[0] == "a-much-longer-hostname.example.net")
        .unwrap();
    assert_eq!(
        long[1..],
        [
            "provisioning",
            "xrayr",
            "-",
            "FR",
            "192.0.2.1",
            "t",
            "-",
            "-",
            "never"
        ]
    );
    // The widest cell sets the column: the next column starts two spaces after it.
    let header = t.stdout.lines().next().unwrap();
    assert_eq!(
        header.find("STATUS").unwrap(),
        "a-much-longer-hostname.example.net".len() + 2
    );

    // A partial page is noted on standard error; --all fetches every page.
    let p = api.ctl().run(&["vps", "list", "--limit", "2"]);
    p.ok();
    assert_eq!(p.stdout.lines().count(), 3);
    assert!(p.stderr.contains("2 of 3 VPS shown"), "{}", p.stderr);
    let p = api
        .ctl()
        .run(&["vps", "list", "--limit", "2", "--offset", "2"]);
    p.ok();
    assert_eq!(p.stdout.lines().count(), 2);
    assert!(p.stderr.is_empty(), "{}", p.stderr);
    let all = api.ctl().run(&["vps", "list", "--all"]);
    all.ok();
    assert_eq!(all.stdout.lines().count(), 4);
    let none = api.ctl().run(&["vps", "list", "--country", "JP"]);
    none.ok();
    assert!(none.stdout.is_empty());
    assert!(none.stderr.contains("no VPS"));
}

#[test]
fn json_and_yaml_are_the_api_objects() {
    let api = SigmaApi::start();
    api.ctl()
        .run(&[
            "vps",
            "create",
            "a.example",
            "--purpose",
            "xrayr",
            "--tag",
            "yes",
            "--country",
            "NO",
        ])
        .ok();
    api.ctl()
        .run(&["vps", "create", "b.example", "--purpose", "monitor"])
        .ok();
    let j = api.ctl().run(&["-o", "json", "vps", "list"]);
    j.ok();
    let list: List<Vps> = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(list.total, 2);
    let jv: Value = serde_json::from_str(&j.stdout).unwrap();
    let y = api.ctl().run(&["vps", "list", "--output", "yaml"]);
    y.ok();
    let yv: Value = yaml_serde::from_str(&y.stdout).unwrap();
    assert_eq!(yv, jv, "YAML and JSON carry the same object");
    // Norway stays a string for YAML 1.1 readers too.
    assert!(y.stdout.contains("country: \"NO\"\n"), "{}", y.stdout);
    assert!(y.stdout.contains("- \"yes\"\n"), "{}", y.stdout);
    // A listed object is the shown object.
    let shown = api.ctl_json(&["vps", "show", "a.example"]);
    let listed = jv["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hostname"] == "a.example")
        .unwrap();
    assert_eq!(&shown, listed);
    // --all joins pages into one list object.
    let all = api.ctl_json(&["vps", "list", "--all"]);
    assert_eq!(all["total"], 2);
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    // Commands without a body print nothing for scripts.
    api.ctl().run(&["purposes", "create", "tmp"]).ok();
    let d = api.ctl().run(&["-o", "json", "purposes", "delete", "tmp"]);
    d.ok();
    assert!(d.stdout.is_empty());
}

#[test]
fn completions_need_no_server() {
    let dir = TempDir::new("completions");
    for shell in ["bash", "zsh", "fish"] {
        let r = Ctl::new(dir.path()).run(&["completions", shell]);
        r.ok();
        assert!(r.stdout.contains("sigmactl"), "{shell}: {}", r.stdout);
        assert!(r.stdout.contains("routes"), "{shell}");
    }
    Ctl::new(dir.path())
        .run(&["completions", "tcsh"])
        .fails(2, &["invalid value"]);
    let v = Ctl::new(dir.path()).run(&["--version"]);
    v.ok();
    assert!(v.stdout.starts_with("sigmactl "));
}

/// A one-answer-fits-all HTTP server for failures a healthy sigma-api does not produce on
/// demand (5xx, a proxy's HTML error page, a body that is not JSON).
fn canned_server(status: &str, content_type: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn server_failures_are_explained() {
    let dir = TempDir::new("canned");
    let run = |url: &str| {
        Ctl::new(dir.path())
            .env("SIGMA_API_URL", url)
            .env("SIGMA_API_KEY", ADMIN_KEY)
            .run(&["vps", "list"])
    };
    let url = canned_server(
        "503 Service Unavailable",
        "application/json",
        r#"{"error":"unavailable","message":"the database is unavailable; try again","fields":{}}"#,
    );
    run(&url).fails(
        1,
        &[
            "sigma-api is unavailable (HTTP 503)",
            "the database is unavailable",
            "Try again shortly",
        ],
    );
    let url = canned_server(
        "500 Internal Server Error",
        "application/json",
        r#"{"error":"internal","message":"internal error; see the server log","fields":{}}"#,
    );
    run(&url).fails(1, &["sigma-api failed (HTTP 500)", "sigma-api's log"]);
    let url = canned_server("502 Bad Gateway", "text/html", "<html>bad gateway</html>");
    run(&url).fails(
        1,
        &["sigma-api failed (HTTP 502)", "<html>bad gateway</html>"],
    );
    let url = canned_server("200 OK", "text/plain", "hello");
    run(&url).fails(1, &["unexpected answer from", "/api/vps", "not JSON"]);
    let url = canned_server("200 OK", "application/json", r#"{"items": 3}"#);
    run(&url).fails(1, &["does not match the API"]);
}

// ---------------------------------------------------------------------------------------------
// Mesh commands

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An RFC 3339 time `minutes` from now (negative: ago).
fn from_now(minutes: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Enrolls an agent the way sigma-agent does (an enrollment token, then register) and returns
/// its agent key; the VPS is active afterwards.
fn enroll_agent(api: &SigmaApi, hostname: &str, purpose: &str, ip: &str) -> String {
    let t = api.ctl_json(&["enroll", "create", "--purpose", purpose]);
    let token = t["token"].as_str().unwrap().to_string();
    let (status, body) = runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/agent/register", api.url))
            .bearer_auth(&token)
            .json(&json!({"hostname": hostname, "ip_addresses": [{"ip": ip, "label": "public"}]}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(status, 200, "register: {body}");
    body["agent_key"].as_str().unwrap().to_string()
}

/// `register` with an enrollment token: the status and the answer.
fn register_with(api: &SigmaApi, token: &str, hostname: &str) -> (u16, Value) {
    runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/agent/register", api.url))
            .bearer_auth(token)
            .json(&json!({"hostname": hostname}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    })
}

#[test]
fn vps_reenroll_prints_a_bound_token_and_install_command() {
    let api = SigmaApi::start();
    enroll_agent(&api, "edge-1.example.net", "xrayr", "192.0.2.1");
    // A plain token cannot take the VPS over; the refusal points at `vps reenroll`.
    let t = api.ctl_json(&["enroll", "create"]);
    let (st, body) = register_with(&api, t["token"].as_str().unwrap(), "edge-1.example.net");
    assert_eq!(st, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("sigmactl vps reenroll")
    );

    let r = api.ctl().run(&[
        "vps",
        "reenroll",
        "edge-1.example.net",
        "--ttl",
        "30m",
        "--agent-api-url",
        "https://sigma.example.net",
    ]);
    r.ok();
    let token = r
        .stdout
        .lines()
        .find(|l| l.starts_with("sge_"))
        .expect("the token is printed")
        .trim()
        .to_string();
    assert!(
        r.stdout.contains(&format!(
            "curl -fsSL https://sigma.example.net/install.sh | SIGMA_API_URL=https://sigma.example.net SIGMA_ENROLLMENT_TOKEN={token} sh"
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Bound to VPS"), "{}", r.stdout);
    // Bound: another hostname is refused; its own VPS re-enrolls once.
    let (st, body) = register_with(&api, &token, "other.example.net");
    assert_eq!(st, 403, "{body}");
    let (st, body) = register_with(&api, &token, "edge-1.example.net");
    assert_eq!(st, 200, "{body}");
    assert!(body["agent_key"].is_string());
    let (st, _) = register_with(&api, &token, "edge-1.example.net");
    assert_eq!(st, 401, "single use");
    // JSON output is the API's object; an unknown VPS is a clear error.
    let v = api.ctl_json(&["vps", "reenroll", "edge-1.example.net"]);
    assert_eq!(v["enrollment_token"]["max_uses"], 1);
    assert!(v["enrollment_token"]["vps_id"].is_string());
    let r = api.ctl().run(&["vps", "reenroll", "nope.example.net"]);
    assert!(
        r.code != 0 && r.stderr.contains("no VPS has hostname"),
        "{}",
        r.stderr
    );
}

/// One heartbeat with `agent_state`, as the agent of `hostname`.
fn heartbeat(api: &SigmaApi, key: &str, hostname: &str, agent_state: Value) {
    let (status, body) = runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/agent/heartbeat", api.url))
            .bearer_auth(key)
            .json(&json!({"hostname": hostname, "agent_state": agent_state}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 200, "heartbeat: {body}");
}

const XRAYR_MESH: &str = r#"{"enabled": true, "ports": [{"name": "http-api", "number": 8080, "protocol": "HTTP"}], "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}]}"#;

fn mesh_on(api: &SigmaApi) {
    api.ctl()
        .run(&["purposes", "edit", "xrayr", "--mesh", XRAYR_MESH])
        .ok();
}

#[test]
fn vps_mesh_opt_out() {
    let api = SigmaApi::start();
    let v = api.ctl_json(&["vps", "create", "edge-1.example.net", "--purpose", "xrayr"]);
    assert_eq!(v["mesh_opt_out"], false);
    let e = api.ctl_json(&[
        "vps",
        "edit",
        "edge-1.example.net",
        "--mesh-opt-out",
        "true",
    ]);
    assert_eq!(e["mesh_opt_out"], true);
    assert_eq!(e["purpose"], "xrayr", "absent fields stay");
    let s = api.ctl().run(&["vps", "show", "edge-1.example.net"]);
    s.ok();
    assert!(s.stdout.contains("opted out of the mesh"), "{}", s.stdout);
    assert!(s.stdout.contains("Mesh:"), "{}", s.stdout);
    let e = api.ctl_json(&[
        "vps",
        "edit",
        "edge-1.example.net",
        "--mesh-opt-out",
        "false",
    ]);
    assert_eq!(e["mesh_opt_out"], false);
    api.ctl()
        .run(&[
            "vps",
            "edit",
            "edge-1.example.net",
            "--mesh-opt-out",
            "maybe",
        ])
        .fails(2, &["invalid value"]);
    let c = api.ctl_json(&[
        "vps",
        "create",
        "edge-2.example.net",
        "--purpose",
        "xrayr",
        "--mesh-opt-out",
        "true",
    ]);
    assert_eq!(c["mesh_opt_out"], true);
    // The audit log records the change like any other.
    let a = api.ctl_json(&["audit", "--action", "vps.update"]);
    assert!(a["total"].as_i64().unwrap() >= 2, "{a}");
}

#[test]
fn mesh_status_table_and_json() {
    let api = SigmaApi::start();
    mesh_on(&api);
    let key = enroll_agent(&api, "edge-1.example.net", "xrayr", "203.0.113.7");
    heartbeat(
        &api,
        &key,
        "edge-1.example.net",
        json!({"mode": "mesh", "mesh_state": {
            "state": "degraded", "reason": "Envoy not ready for 3m",
            "bundle_version": "b7", "token_expires_at": from_now(30), "restarts": 2}}),
    );
    let key2 = enroll_agent(&api, "edge-2.example.net", "xrayr", "203.0.113.8");
    heartbeat(
        &api,
        &key2,
        "edge-2.example.net",
        json!({"mode": "classic"}),
    );
    api.ctl()
        .run(&[
            "vps",
            "create",
            "relay-1.example.net",
            "--purpose",
            "vpn-relay",
        ])
        .ok();

    let t = api.ctl().run(&["mesh", "status"]);
    t.ok();
    let rows = assert_aligned(&t.stdout);
    assert_eq!(
        rows[0],
        [
            "HOSTNAME",
            "PURPOSE",
            "STATUS",
            "SYNC",
            "WORKLOAD ENTRY",
            "AGENT MESH",
            "MESSAGE"
        ]
    );
    let row = |h: &str| rows.iter().find(|r| r[0] == h).unwrap().clone();
    let e1 = row("edge-1.example.net");
    assert_eq!(e1[1..6], ["xrayr", "active", "pending", "-", "degraded"]);
    assert!(e1[6].contains("agent: Envoy not ready for 3m"), "{e1:?}");
    assert_eq!(row("edge-2.example.net")[5], "classic");
    assert_eq!(
        row("relay-1.example.net")[2..6],
        ["provisioning", "pending", "-", "-"]
    );

    let hosts = |args: &[&str]| {
        let mut a = vec!["mesh", "status"];
        a.extend_from_slice(args);
        let mut h = ids(&api.ctl_json(&a));
        h.sort();
        h
    };
    assert_eq!(hosts(&["--phase", "degraded"]), ["edge-1.example.net"]);
    assert_eq!(
        hosts(&["--phase", "none"]),
        ["edge-2.example.net", "relay-1.example.net"]
    );
    assert_eq!(hosts(&["--purpose", "vpn-relay"]), ["relay-1.example.net"]);
    assert_eq!(hosts(&["--status", "active", "--sync", "pending"]).len(), 2);
    let none = api.ctl_json(&["mesh", "status", "--sync", "error"]);
    assert_eq!(none["total"], 0);
    let r = api.ctl().run(&["mesh", "status", "--sync", "error"]);
    r.ok();
    assert!(r.stderr.contains("no VPS"), "{r:?}");
    api.ctl()
        .run(&["mesh", "status", "--sync", "broken"])
        .fails(2, &["invalid value"]);
    // -o json is the API's VPS objects, mesh and agent_state included.
    let j = api.ctl_json(&["mesh", "status", "--phase", "degraded"]);
    assert_eq!(j["items"][0]["agent_state"]["mesh_state"]["restarts"], 2);
    assert_eq!(j["items"][0]["mesh"]["status"], "pending");

    let d = api.ctl().run(&["mesh", "status", "edge-1.example.net"]);
    d.ok();
    for needle in [
        "Agent mesh:",
        "degraded",
        "Envoy not ready for 3m",
        "Bundle version:",
        "b7",
        "Token expires:",
        "Restarts:",
        "Agent mode:",
    ] {
        assert!(d.stdout.contains(needle), "{needle} missing:\n{}", d.stdout);
    }
    assert_eq!(
        api.ctl_json(&["mesh", "status", "edge-1.example.net"]),
        api.ctl_json(&["vps", "show", "edge-1.example.net"])
    );
    let s = api.ctl().run(&["vps", "show", "edge-1.example.net"]);
    s.ok();
    assert!(
        s.stdout.contains("Mesh proxy:") && s.stdout.contains("degraded: Envoy not ready for 3m"),
        "{}",
        s.stdout
    );
    assert!(s.stdout.contains("2 restart(s)"), "{}", s.stdout);
    api.ctl()
        .run(&["mesh", "status", "gone.example.net"])
        .fails(1, &["no VPS has hostname"]);
}

/// The YAML files of a directory, by name.
fn yaml_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn mesh_export_to_stdout_and_a_directory() {
    let api = SigmaApi::start();
    mesh_on(&api);
    enroll_agent(&api, "edge-1.example.net", "xrayr", "203.0.113.7");

    let y = api.ctl().run(&["mesh", "export"]);
    y.ok();
    assert!(
        y.stdout.starts_with("# Istio objects of the sigma mesh"),
        "{}",
        y.stdout
    );
    assert!(y.stdout.contains("kind: WorkloadEntry"), "{}", y.stdout);
    assert_eq!(
        api.ctl().run(&["mesh", "export", "-o", "-"]).stdout,
        y.stdout
    );
    let j = api.ctl_json(&["mesh", "export"]);
    let items = j["items"].as_array().unwrap();
    let entry = items.iter().find(|o| o["kind"] == "WorkloadEntry").unwrap();
    assert_eq!(entry["spec"]["address"], "203.0.113.7");
    let entry_name = entry["metadata"]["name"].as_str().unwrap().to_string();

    let out = TempDir::new("export");
    let dir = out.path().join("mesh");
    let dir_s = dir.to_str().unwrap();
    let r = api.ctl().run(&["mesh", "export", "-o", dir_s]);
    r.ok();
    assert!(r.stdout.contains("kubectl apply -k"), "{}", r.stdout);
    let files = yaml_files(&dir);
    assert_eq!(files.len(), items.len() + 1, "{files:?}");
    let entry_file = format!("workloadentry-{entry_name}.yaml");
    assert!(files.contains(&entry_file), "{files:?}");
    let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let k: Value = yaml_serde::from_str(&k).unwrap();
    assert_eq!(k["resources"].as_array().unwrap().len(), items.len());
    // Each file holds its object, as sigma-api served it.
    let from_file: Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join(&entry_file)).unwrap()).unwrap();
    assert_eq!(&from_file, entry);
    // A file of someone else's stays; a second export changes nothing.
    std::fs::write(dir.join("notes.yaml"), "mine: true\n").unwrap();
    let r = api.ctl().run(&["mesh", "export", "-o", dir_s]);
    r.ok();
    assert!(r.stdout.contains("0 file(s) written"), "{}", r.stdout);

    // The VPS leaves the mesh: its WorkloadEntry's file goes.
    api.ctl()
        .run(&["vps", "retire", "edge-1.example.net", "--force"])
        .ok();
    let r = api.ctl().run(&["mesh", "export", "-o", dir_s]);
    r.ok();
    assert!(
        r.stdout.contains(&format!(
            "removed ({entry_file}, workloadgroup-{entry_name}.yaml)"
        )),
        "{}",
        r.stdout
    );
    let files = yaml_files(&dir);
    assert!(!files.contains(&entry_file), "{files:?}");
    assert!(files.contains(&"notes.yaml".to_string()));

    // -o DIR is only for commands that write files.
    api.ctl()
        .run(&["vps", "list", "-o", dir_s])
        .fails(2, &["expected table, json or yaml"]);
}

#[test]
fn mesh_bootstrap_errors() {
    let api = SigmaApi::start();
    mesh_on(&api);
    enroll_agent(&api, "edge-1.example.net", "xrayr", "203.0.113.7");
    let out = TempDir::new("bootstrap");
    let dir = out.path().join("bundle");
    let dir_s = dir.to_str().unwrap();

    api.ctl()
        .run(&["mesh", "bootstrap", "edge-1.example.net"])
        .fails(2, &["give -o DIR"]);
    api.ctl()
        .run(&["mesh", "bootstrap", "edge-1.example.net", "-o", "-"])
        .fails(2, &["five files"]);
    api.ctl()
        .run(&["mesh", "bootstrap", "nowhere.example.net", "-o", dir_s])
        .fails(1, &["no VPS has hostname \"nowhere.example.net\""]);

    // The test sigma-api runs with the mesh off: no bundle, and it says why. (A sigma-api
    // without the endpoint yet is named as too old.)
    let r = api
        .ctl()
        .run(&["mesh", "bootstrap", "edge-1.example.net", "-o", dir_s]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        (r.stderr
            .contains("no bootstrap bundle for edge-1.example.net")
            && r.stderr.contains("conflict (HTTP 409)")
            && r.stderr.contains("--mesh off"))
            || r.stderr
                .contains("does not serve GET /api/agent/istio-bootstrap"),
        "{r:?}"
    );
    assert!(!dir.exists(), "nothing is written without a bundle");

    // A readonly key may not fetch a credential.
    let ro = api.ctl_key("readonly");
    let r = api.ctl().env("SIGMA_API_KEY", &ro).run(&[
        "mesh",
        "bootstrap",
        "edge-1.example.net",
        "-o",
        dir_s,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("forbidden (HTTP 403)")
            || r.stderr
                .contains("does not serve GET /api/agent/istio-bootstrap"),
        "{r:?}"
    );
}

/// The links of a `mesh doctor -o json` run, by name, and its exit code.
fn doctor(api: &SigmaApi, args: &[&str]) -> (i32, std::collections::BTreeMap<String, Value>, Run) {
    let mut a = vec!["-o", "json", "mesh", "doctor"];
    a.extend_from_slice(args);
    let r = api.ctl().run(&a);
    let links: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("no JSON from mesh doctor ({e}): {r:?}"));
    let mut by = std::collections::BTreeMap::new();
    for l in links.as_array().unwrap() {
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["fix", "link", "reason", "result"], "{l}");
        by.insert(l["link"].as_str().unwrap().to_string(), l.clone());
    }
    (r.code, by, r)
}

#[track_caller]
fn link_is(
    links: &std::collections::BTreeMap<String, Value>,
    name: &str,
    result: &str,
    needle: &str,
) {
    let l = &links[name];
    assert_eq!(l["result"], result, "{name}: {l}");
    let text = format!("{} {}", l["reason"], l["fix"]);
    assert!(text.contains(needle), "{name} lacks {needle:?}: {l}");
}

/// A stand-in for Prometheus' `/api/v1/query`: answers each query with `answer(query)`
/// (status line, JSON body) and records the queries it got.
fn fake_prometheus(
    answer: impl Fn(&str) -> (&'static str, String) + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/prom/", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req).to_string();
            let target = head.split(' ').nth(1).unwrap_or("/").to_string();
            let u = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
            let (status, body) = if u.path() == "/prom/api/v1/query" {
                let q = u
                    .query_pairs()
                    .find(|(k, _)| k == "query")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                log.lock().unwrap().push(q.clone());
                answer(&q)
            } else {
                ("404 Not Found", "404 page not found".to_string())
            };
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (url, seen)
}

fn prom_vector(value: &str) -> String {
    json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "sigma-envoy"}, "value": [1.7e9, value]}
    ]}})
    .to_string()
}

#[test]
fn mesh_doctor_walks_the_chain() {
    let api = SigmaApi::start();

    // Not mesh-enabled (vpn-relay has the mesh off), and no agent ever reported.
    api.ctl()
        .run(&[
            "vps",
            "create",
            "relay-1.example.net",
            "--purpose",
            "vpn-relay",
            "--status",
            "active",
            "--ip",
            "198.51.100.3",
        ])
        .ok();
    let (code, links, r) = doctor(&api, &["relay-1.example.net"]);
    assert_eq!(code, 1, "{r:?}");
    assert!(
        r.stderr.contains("links of relay-1.example.net failed"),
        "{r:?}"
    );
    link_is(&links, "vps-active", "ok", "active");
    link_is(
        &links,
        "mesh-enabled",
        "failed",
        "sigmactl purposes edit vpn-relay",
    );
    link_is(&links, "agent-heartbeat", "failed", "never heartbeated");
    link_is(&links, "agent-mesh-mode", "failed", "no state");
    link_is(&links, "proxy", "failed", "no pilot-agent state");
    // The people's view: each link, its verdict, the fix under it, a summary.
    let h = api.ctl().run(&["mesh", "doctor", "relay-1.example.net"]);
    assert_eq!(h.code, 1);
    assert!(
        h.stdout.starts_with("mesh doctor: relay-1.example.net"),
        "{}",
        h.stdout
    );
    assert!(h.stdout.contains("failed   mesh enabled "), "{}", h.stdout);
    assert!(
        h.stdout.contains("fix: turn it on for the purpose"),
        "{}",
        h.stdout
    );
    assert!(h.stdout.contains(" failed\n"), "{}", h.stdout);

    mesh_on(&api);
    // Mesh-enabled, its agent in mesh mode but pilot-agent degraded and the token expired.
    let key = enroll_agent(&api, "edge-1.example.net", "xrayr", "203.0.113.7");
    heartbeat(
        &api,
        &key,
        "edge-1.example.net",
        json!({"mode": "mesh", "mesh_state": {
            "state": "degraded", "reason": "istiod unreachable: connection refused",
            "token_expires_at": from_now(-5), "cert_expires_at": from_now(600), "restarts": 3}}),
    );
    let (code, links, r) = doctor(&api, &["edge-1.example.net"]);
    assert_eq!(code, 1, "{r:?}");
    link_is(&links, "vps-active", "ok", "active");
    link_is(
        &links,
        "mesh-enabled",
        "ok",
        "purpose xrayr has the mesh on",
    );
    link_is(&links, "agent-heartbeat", "ok", "last heartbeat");
    link_is(&links, "agent-mesh-mode", "ok", "mesh mode");
    link_is(
        &links,
        "proxy",
        "failed",
        "istiod unreachable: connection refused",
    );
    link_is(&links, "token", "failed", "expired");
    link_is(&links, "certificate", "ok", "valid until");
    // This sigma-api either reports the cluster's WorkloadEntry (mesh off: nothing applies
    // it) or is too old to, and then the recorded status is shown as a warning.
    let we = &links["workload-entry"];
    let too_old = we["reason"]
        .as_str()
        .unwrap()
        .contains("sigma-api too old to report the cluster's WorkloadEntry");
    if too_old {
        link_is(
            &links,
            "workload-entry",
            "warning",
            "recorded sync status pending",
        );
    } else {
        link_is(&links, "workload-entry", "failed", "--mesh off");
    }

    // The same VPS, repaired: ready with valid credentials.
    heartbeat(
        &api,
        &key,
        "edge-1.example.net",
        json!({"mode": "mesh", "mesh_state": {
            "state": "ready", "bundle_version": "b1",
            "token_expires_at": from_now(40), "cert_expires_at": from_now(1200), "restarts": 0}}),
    );
    let (code, links, r) = doctor(&api, &["edge-1.example.net"]);
    link_is(&links, "proxy", "ok", "ready");
    link_is(&links, "token", "ok", "valid until");
    let failed: Vec<&String> = links
        .iter()
        .filter(|(_, l)| l["result"] == "failed")
        .map(|(k, _)| k)
        .collect();
    if too_old {
        assert_eq!(code, 0, "nothing failed: {r:?}");
        assert!(failed.is_empty(), "{failed:?}");
    } else {
        assert_eq!(code, 1, "{r:?}");
        assert_eq!(failed, ["workload-entry"]);
    }

    // The heartbeat goes stale.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, links, _) = doctor(&api, &["edge-1.example.net", "--stale-after", "1"]);
    assert_eq!(code, 1);
    link_is(&links, "agent-heartbeat", "failed", "older than 1s");
    link_is(&links, "proxy", "ok", "may be out of date");

    // Opted out.
    api.ctl()
        .run(&[
            "vps",
            "edit",
            "edge-1.example.net",
            "--mesh-opt-out",
            "true",
        ])
        .ok();
    let (code, links, _) = doctor(&api, &["edge-1.example.net"]);
    assert_eq!(code, 1);
    link_is(&links, "mesh-enabled", "failed", "--mesh-opt-out false");
    api.ctl()
        .run(&[
            "vps",
            "edit",
            "edge-1.example.net",
            "--mesh-opt-out",
            "false",
        ])
        .ok();

    // With Prometheus: Envoy scraped, requests to Xboard seen.
    let (prom, seen) = fake_prometheus(|q| {
        if q.starts_with("up{") {
            ("200 OK", prom_vector("1"))
        } else {
            ("200 OK", prom_vector("0.25"))
        }
    });
    let (_, links, r) = doctor(&api, &["edge-1.example.net", "--prometheus", &prom]);
    link_is(&links, "prometheus-scrape", "ok", "1 of 1 target(s) up");
    let queries = seen.lock().unwrap().clone();
    assert_eq!(
        queries[0], r#"up{sigma_target_kind="envoy", hostname="edge-1.example.net"}"#,
        "{r:?}"
    );
    match queries.get(1) {
        // The WorkloadEntry's name is known once sigma-api reports it.
        Some(q) => {
            assert!(
                q.contains("istio_requests_total{source_workload=\"vps-edge-1")
                    && q.contains("destination_service_name=~\"xboard.*\"}[10m]"),
                "{q}"
            );
            link_is(&links, "xboard-requests", "ok", "0.250 requests/s");
        }
        None => link_is(
            &links,
            "xboard-requests",
            "warning",
            "no WorkloadEntry name",
        ),
    }

    // Prometheus knows no such target, or answers an error, or is not there at all.
    let (prom, _) = fake_prometheus(|q| {
        if q.starts_with("up{") {
            (
                "200 OK",
                json!({"status": "success", "data": {"resultType": "vector", "result": []}})
                    .to_string(),
            )
        } else {
            ("200 OK", prom_vector("0"))
        }
    });
    let (code, links, _) = doctor(&api, &["edge-1.example.net", "--prometheus", &prom]);
    assert_eq!(code, 1);
    link_is(
        &links,
        "prometheus-scrape",
        "failed",
        "no Envoy target of edge-1.example.net",
    );
    let (prom, _) = fake_prometheus(|_| {
        (
            "400 Bad Request",
            json!({"status": "error", "errorType": "bad_data", "error": "parse error"}).to_string(),
        )
    });
    let (_, links, _) = doctor(&api, &["edge-1.example.net", "--prometheus", &prom]);
    link_is(
        &links,
        "prometheus-scrape",
        "failed",
        "bad_data: parse error",
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (code, links, _) = doctor(&api, &["edge-1.example.net", "--prometheus", &closed]);
    assert_eq!(code, 1);
    link_is(
        &links,
        "prometheus-scrape",
        "failed",
        "could not ask Prometheus",
    );
    api.ctl()
        .run(&[
            "mesh",
            "doctor",
            "edge-1.example.net",
            "--prometheus",
            "ftp://x",
        ])
        .fails(2, &["not an http(s) URL"]);
    api.ctl()
        .run(&["mesh", "doctor", "nowhere.example.net"])
        .fails(1, &["no VPS has hostname"]);
}

/// A date `days` from today, as the API writes dates.
fn day(days: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[test]
fn contract_edit_list_and_expiring() {
    let api = SigmaApi::start();
    for h in ["soon.example", "later.example", "none.example"] {
        api.ctl()
            .run(&["vps", "create", h, "--purpose", "xrayr"])
            .ok();
    }
    let soon = day(3);
    let v = api.ctl_json(&[
        "vps",
        "edit",
        "soon.example",
        "--cost",
        "4.99",
        "--currency",
        "eur",
        "--billing-cycle",
        "monthly",
        "--expires-on",
        &soon,
        "--ssh-port",
        "2222",
        "--data-center",
        "FSN1",
    ]);
    assert_eq!(v["contract"]["cost"], "4.99");
    assert_eq!(v["contract"]["currency"], "EUR");
    assert_eq!(v["contract"]["ssh_port"], 2222);
    let later = day(20);
    api.ctl()
        .run(&[
            "vps",
            "edit",
            "later.example",
            "--cost",
            "120",
            "--currency",
            "USD",
            "--billing-cycle",
            "yearly",
            "--expires-on",
            &later,
            "--auto-renew",
            "true",
        ])
        .ok();
    // Clearing, and sigma-api's field names on a bad value.
    let v = api.ctl_json(&[
        "vps",
        "edit",
        "soon.example",
        "--clear-contract",
        "data-center",
    ]);
    assert_eq!(v["contract"]["data_center"], Value::Null);
    assert_eq!(v["contract"]["ssh_port"], 2222, "untouched");
    api.ctl()
        .run(&["vps", "edit", "soon.example", "--ssh-port", "0"])
        .fails(1, &["contract.ssh_port"]);
    api.ctl()
        .run(&["vps", "edit", "soon.example", "--clear-contract", "colour"])
        .fails(2, &["not a contract field"]);

    // vps list: columns and filters.
    let t = api.ctl().run(&["vps", "list", "--currency", "eur"]);
    t.ok();
    let rows = assert_aligned(&t.stdout);
    assert_eq!(rows.len(), 2, "{}", t.stdout);
    assert_eq!(rows[1][0], "soon.example");
    assert!(t.stdout.contains("4.99 EUR/mo"), "{}", t.stdout);
    let v = api.ctl_json(&["vps", "list", "--expires-within-days", "10"]);
    assert_eq!(ids(&v), ["soon.example"]);
    let v = api.ctl_json(&["vps", "list", "--cost-min", "100"]);
    assert_eq!(ids(&v), ["later.example"]);

    // vps expiring: soonest first, the undated left out.
    let t = api.ctl().run(&["vps", "expiring", "--days", "30"]);
    t.ok();
    let rows = assert_aligned(&t.stdout);
    assert_eq!(
        rows[0],
        [
            "HOSTNAME",
            "STATUS",
            "PROVIDER",
            "EXPIRES",
            "AUTO-RENEW",
            "COST"
        ]
    );
    let hosts: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(hosts, ["soon.example", "later.example"]);
    assert!(
        t.stdout.contains(&format!("{soon} (in 3d)")),
        "{}",
        t.stdout
    );
    let v = api.ctl_json(&["vps", "expiring", "--days", "5"]);
    assert_eq!(ids(&v), ["soon.example"]);
}

#[test]
fn vps_export_and_import_round_trip() {
    let api = SigmaApi::start();
    api.ctl()
        .run(&[
            "vps",
            "create",
            "a.example",
            "--purpose",
            "xrayr",
            "--alias=-dash",
        ])
        .ok();
    api.ctl()
        .run(&[
            "vps",
            "edit",
            "a.example",
            "--cost",
            "4.99",
            "--currency",
            "EUR",
        ])
        .ok();
    let dir = TempDir::new("books");
    let csv = dir.path().join("vps.csv");
    api.ctl()
        .run(&["vps", "export", "--file", csv.to_str().unwrap()])
        .ok();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("hostname,"), "{text}");
    assert!(
        text.contains("'-dash"),
        "formula-like cell neutralised: {text}"
    );
    let t = api.ctl().run(&["vps", "import", csv.to_str().unwrap()]);
    t.ok();
    assert!(
        t.stdout
            .contains("0 created, 0 updated, 1 unchanged, 0 errors (written)"),
        "{}",
        t.stdout
    );
    std::fs::write(&csv, format!("{text}b.example,xrayr\n")).unwrap();
    // The export's header has 24 columns; the added line has 2: a CSV error, named.
    api.ctl()
        .run(&["vps", "import", csv.to_str().unwrap()])
        .fails(1, &["rows[2]"]);
    let sheet = dir.path().join("sheet.csv");
    std::fs::write(
        &sheet,
        "hostname,purpose,cost,currency\na.example,xrayr,5.99,EUR\nb.example,xrayr,,\nc.example,nope,,\n",
    )
    .unwrap();
    let t = api.ctl().run(&[
        "vps",
        "import",
        sheet.to_str().unwrap(),
        "--dry-run",
        "--partial",
    ]);
    t.ok();
    assert!(
        t.stdout
            .contains("1 created, 1 updated, 0 unchanged, 1 errors (dry run, nothing written)"),
        "{}",
        t.stdout
    );
    api.ctl()
        .run(&["vps", "import", sheet.to_str().unwrap()])
        .fails(1, &["rows[3].purpose"]);
    let t = api
        .ctl()
        .run(&["vps", "import", sheet.to_str().unwrap(), "--partial"]);
    t.ok();
    let v = api.ctl_json(&["vps", "show", "a.example"]);
    assert_eq!(v["contract"]["cost"], "5.99");
    let json_file = dir.path().join("vps.json");
    api.ctl()
        .run(&[
            "vps",
            "export",
            "--format",
            "json",
            "--currency",
            "EUR",
            "--file",
            json_file.to_str().unwrap(),
        ])
        .ok();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let t = api
        .ctl()
        .run(&["vps", "import", json_file.to_str().unwrap()]);
    t.ok();
    assert!(t.stdout.contains("1 unchanged"), "{}", t.stdout);
}

/// A fresh PostgreSQL database loaded with the earlier sigma's schema and the fixture rows;
/// `None` (skipped) without `SIGMA_TEST_POSTGRES_URL`, unless `SIGMA_TEST_REQUIRE_POSTGRES=1`.
fn sigma_v1_database() -> Option<String> {
    let url = runtime().block_on(sigma_testkit::db::postgres_database())?;
    runtime().block_on(async {
        let db = sqlx::PgPool::connect(&url).await.unwrap();
        for f in ["sigma_v1_schema.sql", "sigma_v1_rows.sql"] {
            let sql = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(f),
            )
            .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&db)
                .await
                .unwrap();
        }
        db.close().await;
    });
    Some(url)
}

#[test]
fn import_from_sigma_v1() {
    let Some(url) = sigma_v1_database() else {
        return;
    };
    let api = SigmaApi::start();
    // What exists already is reused, not duplicated.
    api.ctl().run(&["providers", "create", "hetzner"]).ok();

    let t = api
        .ctl()
        .run(&["import", "sigma-v1", "--database-url", &url, "--dry-run"]);
    t.ok();
    for l in [
        "provider \"Hetzner\": exists, reused",
        "provider \"TinyHost\": would be created",
        "purpose \"management\": would be created",
        "purpose \"unassigned\": would be created",
        "exchange rate USD→EUR = 0.923400: would be set",
        "vps \"exit-1.example.net\": created",
        "vps \"mgmt-1.example.net\": would be imported once its provider/purpose is created",
        "dry run, nothing written",
    ] {
        assert!(t.stdout.contains(l), "{l:?} missing:\n{}", t.stdout);
    }
    assert_eq!(
        api.ctl_json(&["vps", "list"])["total"],
        0,
        "a dry run writes nothing"
    );

    let t = api
        .ctl()
        .run(&["import", "sigma-v1", "--database-url", &url]);
    t.ok();
    let out = &t.stdout;
    for l in [
        "provider \"TinyHost\": created",
        "purpose \"management\": created",
        "vps \"EXIT-1.example.net\": an older duplicate row of this hostname (retiring) not carried",
        "vps \"mgmt-1.example.net\": status suspended → provisioning",
        "vps \"gone-1.example.net\": retired in sigma-v1, not carried",
        "label \"电信\" → public",
        "route \"placeholder\" of \"exit-1.example.net\": a placeholder without backend, not carried",
        "1 route(s) of \"gone-1.example.net\": its VPS was not carried",
        "1 route(s) of \"exit-1.example.net\": set",
        "done: 3 VPS created, 0 updated, 0 unchanged, 0 refused",
        "not carried by design",
    ] {
        assert!(out.contains(l), "{l:?} missing:\n{out}");
    }
    let v = api.ctl_json(&["vps", "show", "exit-1.example.net"]);
    assert_eq!(v["status"], "active");
    assert_eq!(v["provider"], "hetzner", "the existing provider");
    assert_eq!(v["alias"], "de-1");
    assert_eq!(v["tags"], json!(["env=prod", "fast"]));
    assert_eq!(
        v["ip_addresses"],
        json!([
            {"ip": "203.0.113.10", "label": "public"},
            {"ip": "10.0.0.10", "label": "internal"},
            {"ip": "198.51.100.10", "label": "public"}
        ])
    );
    let c = &v["contract"];
    assert_eq!(c["cost"], "4.99");
    assert_eq!(c["currency"], "EUR");
    assert_eq!(c["billing_cycle"], "monthly");
    assert_eq!(c["expires_on"], "2027-01-15");
    assert_eq!(c["ssh_port"], 2222);
    assert_eq!(c["data_center"], "FSN1");
    assert_eq!(c["traffic_gb"], 20000);
    let m = api.ctl_json(&["vps", "show", "mgmt-1.example.net"]);
    assert_eq!(m["status"], "provisioning");
    assert_eq!(m["purpose"], "management");
    assert_eq!(m["provider"], "TinyHost");
    assert_eq!(
        api.ctl_json(&["vps", "show", "plain-1.example.net"])["purpose"],
        "unassigned"
    );
    let routes = api.ctl_json(&["routes", "list", "exit-1.example.net"]);
    let names: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp-hk01"]);
    // Through the API: validated and audited.
    let audit = api.ctl_json(&["audit", "--action", "vps.import"]);
    assert_eq!(audit["total"], 1, "{audit}");

    // Again: nothing new (idempotent by hostname, providers and purposes reused).
    let t = api
        .ctl()
        .run(&["import", "sigma-v1", "--database-url", &url]);
    t.ok();
    assert!(
        t.stdout
            .contains("done: 0 VPS created, 0 updated, 3 unchanged, 0 refused"),
        "{}",
        t.stdout
    );
}
