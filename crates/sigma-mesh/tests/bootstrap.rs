//! The Istio bootstrap bundle of a VPS, rendered from its WorkloadEntry and from cluster data:
//! each file, quoting (checked against a real POSIX shell), the key set, the no-interception
//! defaults, the iptables mode, revisions, and the metadata.

mod fixtures;

use std::collections::BTreeMap;
use std::net::IpAddr;

use fixtures::{ip, purpose, vps};
use serde_json::{Value, json};
use sigma_mesh::bundle::*;
use sigma_mesh::model::workload_entry_name;
use sigma_mesh::{Error, MeshPurpose, MeshTemplate, MeshVps, egress_bindings};
use sigma_types::VpsStatus;
use sigma_types::mesh::{InterceptionMode, IstioBootstrapBundle, IstioProxyArchive, is_sha256_hex};

/// A self-signed P-256 certificate (`openssl req -x509 -subj /O=cluster.local`).
const ROOT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUF3GR9qK/V/q7AyjZ9Jt22RTjzE8wCgYIKoZIzj0EAwIw
GDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDAgFw0yNjExMjcwMjQ2NDlaGA8yMTI2
MTEwMzAyNDY0OVowGDEWMBQGA1UECgwNY2x1c3Rlci5sb2NhbDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKCj5FPx6lbeMHXeZCE1DjCjJEwBLxg9LzHwU+Y+nTg6
csjnQmo6U6mnpQwkAwpGyK3MhuBl7xMHti4N7O4qNoGjUzBRMB0GA1UdDgQWBBSG
m61CjObOZ0DJdWZCwS0zAWt1iDAfBgNVHSMEGDAWgBSGm61CjObOZ0DJdWZCwS0z
AWt1iDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIFtphA51vsd4
XaOZXbuAWlki+vLef93o4sV9DAsvKZ8KAiEAyYF2wORf5h/hZiOZVsLEoK340CiN
vyVeKa5+VNr6gQ8=
-----END CERTIFICATE-----
";
/// `openssl x509 -outform der | sha256sum` of [`ROOT_CERT`].
const ROOT_CERT_SHA256: &str = "53268bb913f9a57acac620780f91c2eb817058216c351afd3b4d4d6df7a05ff0";

/// Another certificate (`/O=other`), for chains and rotation.
const OTHER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUbFPIiElSInul9HTY6EBopMbfKiowCgYIKoZIzj0EAwIw
EDEOMAwGA1UECgwFb3RoZXIwIBcNMjYxMTI3MDI0NjUxWhgPMjEyNjExMDMwMjQ2
NTFaMBAxDjAMBgNVBAoMBW90aGVyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
7c4Juvcpv981EttO7ODzkhTlnBSdgT3TX6BPNQVJnLVgh213irz1bvX03y26gCXG
HkhZzSAm/Ac19VgDUmZs56NTMFEwHQYDVR0OBBYEFLyxqrCU9jivOPPw5sK+kvjU
zxgEMB8GA1UdIwQYMBaAFLyxqrCU9jivOPPw5sK+kvjUzxgEMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgEGe9Zbn+dGp7A0hWuoqFsBQchqiQzxL+
yb407dn/h/0CIQC7MDolt1jla3BG3GO2XlWKxJ/KrHQAsqJbyLwDboew6Q==
-----END CERTIFICATE-----
";
const OTHER_CERT_SHA256: &str = "b05ad454f5cd5fd189e9ef80408caa1709696d6ae495748d35031053ac9cbd95";

/// The `mesh` key of a typical `istio` ConfigMap: Istio's install writes a discovery address,
/// DNS capture switched on mesh-wide and a few proxy settings.
const MESH_CONFIG: &str = "\
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  holdApplicationUntilProxyStarts: true
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: \"true\"
    BOOTSTRAP_XDS_AGENT: \"true\"
  tracing:
    zipkin:
      address: zipkin.istio-system:9411
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: cluster.local
";

fn xrayr() -> MeshPurpose {
    purpose(
        "xrayr",
        json!({
            "enabled": true,
            "ports": [
                {"name": "vless", "number": 443, "protocol": "TCP"},
                {"name": "metrics", "number": 9100, "protocol": "HTTP", "target_port": 19100, "mesh_port": 19101},
                {"name": "dns", "number": 5353, "protocol": "UDP"}
            ],
            "egress": [
                {"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"},
                {"host": "xboard.sigma.svc.cluster.local", "port": 80, "protocol": "HTTP"},
                {"host": "redis.sigma.svc.cluster.local", "port": 6379, "protocol": "Redis", "bind": "127.0.0.7"}
            ]
        }),
    )
}

fn node() -> MeshVps {
    vps(
        1,
        "node-1.example.com",
        "xrayr",
        vec![ip("203.0.113.10", "public")],
    )
}

fn eastwest() -> IpAddr {
    "198.51.100.50".parse().unwrap()
}

fn render_with(
    cp: &ControlPlane,
    p: &MeshPurpose,
    v: &MeshVps,
    mesh: &str,
    root: &str,
) -> Result<RenderedBundle, Error> {
    let w = bundle_workload(&MeshTemplate::default(), p, v)?;
    render_bundle(&BundleInput {
        control_plane: cp,
        workload: &w,
        root_cert_pem: root,
        mesh_config: mesh,
        eastwest: eastwest(),
        istio_proxy: None,
    })
}

fn render(p: &MeshPurpose) -> RenderedBundle {
    render_with(&ControlPlane::default(), p, &node(), MESH_CONFIG, ROOT_CERT).unwrap()
}

/// Parses `KEY='value'` lines the strict way sigma writes them, checking the shape.
fn env_lines(text: &str) -> Vec<(String, String)> {
    assert!(text.ends_with('\n'), "{text}");
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{l}"));
            assert!(v.starts_with('\'') && v.ends_with('\''), "unquoted: {l}");
            let inner = &v[1..v.len() - 1];
            (k.to_string(), inner.replace("'\\''", "'"))
        })
        .collect()
}

fn env_map(text: &str) -> BTreeMap<String, String> {
    env_lines(text).into_iter().collect()
}

/// What a real POSIX shell makes of `cluster.env`: each variable exported, then printed.
fn shell_values(text: &str, keys: &[&str]) -> BTreeMap<String, String> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file =
        std::env::temp_dir().join(format!("sigma-cluster-env-{}-{n}.env", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let mut script = format!("set -a; . '{}'; ", file.display());
    for k in keys {
        script.push_str(&format!("printf '%s\\0' \"${k}\"; "));
    }
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    keys.iter()
        .zip(stdout.split('\0'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn cluster_env_has_istioctls_keys_sorted_with_sigmas_defaults() {
    let b = render(&xrayr());
    let lines = env_lines(&b.files.cluster_env);
    let keys: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "sorted by key");
    assert_eq!(
        keys,
        [
            "BOOTSTRAP_XDS_AGENT",
            "CANONICAL_REVISION",
            "CANONICAL_SERVICE",
            "ISTIO_CUSTOM_IP_TABLES",
            "ISTIO_INBOUND_PORTS",
            "ISTIO_LOCAL_EXCLUDE_PORTS",
            "ISTIO_METAJSON_LABELS",
            "ISTIO_META_CLUSTER_ID",
            "ISTIO_META_DNS_CAPTURE",
            "ISTIO_META_INTERCEPTION_MODE",
            "ISTIO_META_MESH_ID",
            "ISTIO_META_NETWORK",
            "ISTIO_META_POD_PORTS",
            "ISTIO_META_WORKLOAD_ENTRY",
            "ISTIO_META_WORKLOAD_NAME",
            "ISTIO_NAMESPACE",
            "ISTIO_SERVICE",
            "ISTIO_SERVICE_CIDR",
            "ISTIO_SVC_IP",
            "OUTPUT_CERTS",
            "POD_NAMESPACE",
            "PROV_CERT",
            "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION",
            "SERVICE_ACCOUNT",
            "TRUST_DOMAIN",
        ]
    );
    let env = env_map(&b.files.cluster_env);
    let name = workload_entry_name("node-1.example.com");
    let name = name.as_str();
    assert!(name.starts_with("vps-node-1-example-com--"), "{name}");
    for (k, v) in [
        // The deliberate differences from istioctl: one workload name per VPS, no capture.
        ("ISTIO_META_WORKLOAD_NAME", name),
        ("ISTIO_META_WORKLOAD_ENTRY", name),
        ("ISTIO_META_INTERCEPTION_MODE", "NONE"),
        ("ISTIO_CUSTOM_IP_TABLES", "true"),
        ("ISTIO_INBOUND_PORTS", ""),
        ("ISTIO_SERVICE_CIDR", ""),
        // The ConfigMap turns DNS capture on for every proxy; sigma's VPS never capture.
        ("ISTIO_META_DNS_CAPTURE", "false"),
        ("PROV_CERT", CERT_DIR),
        ("OUTPUT_CERTS", CERT_DIR),
        // What istioctl writes from the WorkloadGroup and the mesh config.
        ("CANONICAL_SERVICE", "xrayr"),
        ("CANONICAL_REVISION", "v1"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("ISTIO_META_MESH_ID", "cluster.local"),
        ("ISTIO_META_NETWORK", "provider-hetzner"),
        ("ISTIO_NAMESPACE", "sigma"),
        ("POD_NAMESPACE", "sigma"),
        ("ISTIO_SERVICE", "xrayr.sigma"),
        ("SERVICE_ACCOUNT", "sigma-vm"),
        ("TRUST_DOMAIN", "cluster.local"),
        ("ISTIO_SVC_IP", "203.0.113.10"),
        ("ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021,15020"),
        ("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION", "true"),
        // Other proxy metadata of the ConfigMap is passed on.
        ("BOOTSTRAP_XDS_AGENT", "true"),
    ] {
        assert_eq!(env[k], v, "{k}");
    }
    assert!(
        !env.contains_key("CA_ADDR"),
        "unrevisioned: discoveryAddress is the CA"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&env["ISTIO_META_POD_PORTS"]).unwrap(),
        json!([
            // Where the workload serves each port to the mesh: its ingress listener (explicit
            // for metrics, sigma's default for vless); UDP has none and names the app's port.
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
            {"name": "metrics", "containerPort": 19101, "protocol": "TCP"},
            {"name": "vless", "containerPort": 15379, "protocol": "TCP"}
        ])
    );
    assert_eq!(b.interception, InterceptionMode::None);
}

#[test]
fn labels_json_is_the_workload_entrys_labels() {
    let p = xrayr();
    let v = node();
    let w = bundle_workload(&MeshTemplate::default(), &p, &v).unwrap();
    assert_eq!(w.name(), workload_entry_name("node-1.example.com"));
    let b = render(&p);
    let env = env_map(&b.files.cluster_env);
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&env["ISTIO_METAJSON_LABELS"]).unwrap();
    assert_eq!(labels, w.entry.spec.labels);
    assert_eq!(labels["app"], "xrayr");
    assert_eq!(labels["service.istio.io/canonical-name"], "xrayr");
    assert_eq!(labels["sigma.io/vps-id"], v.id.to_string());
    // Sorted keys: the same labels always give the same bytes (and bundle version).
    let keys: Vec<&String> = labels.keys().collect();
    let raw = &env["ISTIO_METAJSON_LABELS"];
    let mut at = 0;
    for k in keys {
        let i = raw[at..].find(&format!("\"{k}\"")).expect("keys in order") + at;
        at = i;
    }
}

#[test]
fn quoting_survives_a_real_shell() {
    let tricky = [
        ("QUOTE", "it's"),
        ("TWO_QUOTES", "''"),
        ("DOLLAR", "$HOME and `id` and $(id)"),
        ("SPACES", "  a  b  "),
        ("DOUBLE", "say \"hi\"\\n"),
        ("GLOB", "*"),
        ("EMPTY", ""),
        ("UNICODE", "ñandú 東京"),
    ];
    let vars: BTreeMap<String, String> = tricky
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let text = render_cluster_env(&vars, "test").unwrap();
    assert!(text.contains("QUOTE='it'\\''s'\n"), "{text}");
    assert!(text.contains("EMPTY=''\n"), "{text}");
    let keys: Vec<&str> = tricky.iter().map(|(k, _)| *k).collect();
    let got = shell_values(&text, &keys);
    for (k, v) in tricky {
        assert_eq!(got[k], v, "{k} through /bin/sh");
    }
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(shell_quote(""), "''");
}

#[test]
fn a_quote_in_config_map_metadata_reaches_cluster_env_and_mesh_yaml_intact() {
    let mesh = "defaultConfig:\n  proxyMetadata:\n    GREETING: \"it's a 'test'\"\n";
    let b = render_with(&ControlPlane::default(), &xrayr(), &node(), mesh, ROOT_CERT).unwrap();
    assert_eq!(
        shell_values(&b.files.cluster_env, &["GREETING"])["GREETING"],
        "it's a 'test'"
    );
    let m = yaml(&b.files.mesh_yaml);
    assert_eq!(
        m["defaultConfig"]["proxyMetadata"]["GREETING"],
        "it's a 'test'"
    );
}

#[test]
fn unwritable_metadata_is_refused_naming_the_config_map() {
    for (mesh, want) in [
        (
            "defaultConfig:\n  proxyMetadata:\n    MULTI: \"a\\nb\"\n",
            "MULTI holds a line break",
        ),
        (
            "defaultConfig:\n  proxyMetadata:\n    BAD-KEY: x\n",
            "not a valid environment variable name",
        ),
        (
            "defaultConfig:\n  proxyMetadata:\n    NESTED: {a: b}\n",
            "proxyMetadata.NESTED is not a string",
        ),
        ("defaultConfig: [1, 2]\n", "defaultConfig is not a mapping"),
        ("- a\n- b\n", "not a YAML mapping"),
        ("defaultConfig: {a: [\n", "not valid YAML"),
        ("trustDomain: {a: 1}\n", "trustDomain is not a string"),
    ] {
        let e =
            render_with(&ControlPlane::default(), &xrayr(), &node(), mesh, ROOT_CERT).unwrap_err();
        let Error::BadClusterData { what, reason } = &e else {
            panic!("{e:?}")
        };
        assert!(
            what.starts_with("ConfigMap istio-system/istio key mesh"),
            "{what}"
        );
        assert!(e.to_string().contains(want), "{mesh:?}: {reason}");
    }
    // Unquoted scalars are the strings the operator meant.
    let b = render_with(
        &ControlPlane::default(),
        &xrayr(),
        &node(),
        "defaultConfig:\n  proxyMetadata:\n    FLAG: true\n    N: 2\n",
        ROOT_CERT,
    )
    .unwrap();
    let env = env_map(&b.files.cluster_env);
    assert_eq!((env["FLAG"].as_str(), env["N"].as_str()), ("true", "2"));
}

#[test]
fn iptables_mode_captures_only_the_listed_cidrs_and_no_inbound_port() {
    let p = purpose(
        "xrayr",
        json!({
            "enabled": true,
            "egress": [{"host": "xboard.sigma.svc.cluster.local", "port": 443, "protocol": "HTTPS"}],
            "interception": {"mode": "iptables", "service_cidrs": ["10.96.0.0/12", "fd00::/108"]}
        }),
    );
    let b = render(&p);
    let env = env_map(&b.files.cluster_env);
    assert_eq!(env["ISTIO_SERVICE_CIDR"], "10.96.0.0/12,fd00::/108");
    assert_eq!(env["ISTIO_INBOUND_PORTS"], "");
    assert_eq!(env["ISTIO_META_INTERCEPTION_MODE"], "REDIRECT");
    assert_eq!(env["ISTIO_CUSTOM_IP_TABLES"], "false");
    assert_eq!(env["ISTIO_META_DNS_CAPTURE"], "false");
    assert!(
        !env.values().any(|v| v == "*"),
        "never istioctl's capture-all: {env:?}"
    );
    assert_eq!(b.interception, InterceptionMode::Iptables);
    // Without ports there is no pod-ports metadata, as with istioctl.
    assert!(!env.contains_key("ISTIO_META_POD_PORTS"));
}

#[test]
fn revisions_name_the_config_map_istiod_and_the_ca() {
    let plain = ControlPlane::default();
    assert_eq!(plain.mesh_config_map(), "istio");
    assert_eq!(plain.istiod_host(), "istiod.istio-system.svc");
    assert_eq!(plain.istiod_address(), "istiod.istio-system.svc:15012");
    for r in ["", "default"] {
        let cp = ControlPlane {
            revision: Some(r.into()),
            ..ControlPlane::default()
        };
        assert_eq!(cp.revision(), None, "{r:?} is no revision");
        assert_eq!(cp.mesh_config_map(), "istio");
    }
    let cp = ControlPlane {
        namespace: "istio".into(),
        revision: Some("1-24".into()),
        cluster_id: "east".into(),
    };
    cp.validate().unwrap();
    assert_eq!(cp.mesh_config_map(), "istio-1-24");
    assert_eq!(cp.istiod_host(), "istiod-1-24.istio.svc");
    let b = render_with(&cp, &xrayr(), &node(), MESH_CONFIG, ROOT_CERT).unwrap();
    let env = env_map(&b.files.cluster_env);
    assert_eq!(env["CA_ADDR"], "istiod-1-24.istio.svc:15012");
    assert_eq!(env["ISTIO_META_CLUSTER_ID"], "east");
    let m = yaml(&b.files.mesh_yaml);
    assert_eq!(
        m["defaultConfig"]["discoveryAddress"], "istiod-1-24.istio.svc:15012",
        "the ConfigMap's unrevisioned address is replaced by the one hosts maps"
    );
    assert!(
        b.files
            .hosts
            .starts_with("198.51.100.50 istiod-1-24.istio.svc\n"),
        "{}",
        b.files.hosts
    );

    let bad = ControlPlane {
        namespace: "Istio System".into(),
        revision: Some("x".repeat(57)),
        cluster_id: "has space".into(),
    };
    let e = bad.validate().unwrap_err().0;
    for f in ["namespace", "revision", "cluster_id"] {
        assert!(e.contains_key(f), "{f}: {e:?}");
    }
    let ok = ControlPlane {
        revision: Some("x".repeat(56)),
        ..ControlPlane::default()
    };
    ok.validate().unwrap();
}

#[test]
fn mesh_yaml_is_the_config_maps_default_config_with_the_workloads_parts() {
    let b = render(&xrayr());
    let m = yaml(&b.files.mesh_yaml);
    let dc = &m["defaultConfig"];
    assert_eq!(m.as_object().unwrap().len(), 1, "only defaultConfig: {m}");
    assert_eq!(dc["discoveryAddress"], "istiod.istio-system.svc:15012");
    assert_eq!(dc["holdApplicationUntilProxyStarts"], true, "kept");
    assert_eq!(
        dc["tracing"]["zipkin"]["address"], "zipkin.istio-system:9411",
        "kept"
    );
    // The WorkloadGroup's probe: the template's agent health check.
    assert_eq!(
        dc["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 9102}})
    );
    // proxyMetadata holds the metadata variables, not the iptables/start-script settings.
    let md = dc["proxyMetadata"].as_object().unwrap();
    let env = env_map(&b.files.cluster_env);
    for (k, v) in md {
        assert_eq!(env[k.as_str()], v.as_str().unwrap(), "{k}");
    }
    for k in [
        "ISTIO_META_WORKLOAD_NAME",
        "ISTIO_META_DNS_CAPTURE",
        "TRUST_DOMAIN",
    ] {
        assert!(md.contains_key(k), "{k}");
    }
    assert_eq!(md["ISTIO_META_DNS_CAPTURE"], "false");
    for k in ["ISTIO_INBOUND_PORTS", "PROV_CERT", "ISTIO_SERVICE_CIDR"] {
        assert!(!md.contains_key(k), "{k}");
    }
    // The agent reads discoveryAddress with a line scan, not a YAML parser: the first such line
    // must carry the address.
    let line = b
        .files
        .mesh_yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("discoveryAddress:"))
        .unwrap();
    assert_eq!(
        line.trim().trim_matches('"'),
        "istiod.istio-system.svc:15012"
    );

    // A TCP probe, and a ConfigMap without any mesh config (Istio's defaults).
    let p = purpose(
        "vpn",
        json!({"enabled": true, "probe": {"tcp_socket": {"port": 7443}}}),
    );
    let mut v = node();
    v.purpose = "vpn".into();
    let b = render_with(&ControlPlane::default(), &p, &v, "", ROOT_CERT).unwrap();
    let dc = &yaml(&b.files.mesh_yaml)["defaultConfig"];
    assert_eq!(dc["readinessProbe"], json!({"tcpSocket": {"port": 7443}}));
    let env = env_map(&b.files.cluster_env);
    assert_eq!(env["TRUST_DOMAIN"], DEFAULT_TRUST_DOMAIN);
    assert!(!env.contains_key("BOOTSTRAP_XDS_AGENT"));
}

#[test]
fn trust_domain_mesh_id_and_status_port_come_from_the_mesh_config() {
    let mesh = "trustDomain: example.org\ndefaultConfig:\n  statusPort: 16020\n";
    let b = render_with(&ControlPlane::default(), &xrayr(), &node(), mesh, ROOT_CERT).unwrap();
    let env = env_map(&b.files.cluster_env);
    assert_eq!(env["TRUST_DOMAIN"], "example.org");
    assert_eq!(
        env["ISTIO_META_MESH_ID"], "example.org",
        "mesh id defaults to the trust domain"
    );
    assert_eq!(env["ISTIO_LOCAL_EXCLUDE_PORTS"], "22,15090,15021,16020");
    let mesh = "trustDomain: example.org\ndefaultConfig:\n  meshId: fleet\n  statusPort: 15021\n";
    let b = render_with(&ControlPlane::default(), &xrayr(), &node(), mesh, ROOT_CERT).unwrap();
    let env = env_map(&b.files.cluster_env);
    assert_eq!(env["ISTIO_META_MESH_ID"], "fleet");
    assert_eq!(env["ISTIO_LOCAL_EXCLUDE_PORTS"], "22,15090,15021");
}

#[test]
fn hosts_maps_istiod_to_the_gateway_and_each_called_host_to_its_listener() {
    let p = xrayr();
    let b = render(&p);
    let bindings = egress_bindings(&p.settings);
    let xboard = bindings
        .iter()
        .find(|b| b.host == "xboard.sigma.svc.cluster.local")
        .unwrap()
        .bind;
    assert_eq!(
        b.files.hosts,
        format!(
            "198.51.100.50 istiod.istio-system.svc\n\
             127.0.0.7 redis.sigma.svc.cluster.local\n\
             {xboard} xboard.sigma.svc.cluster.local\n"
        ),
        "one line per host, sorted, at the Sidecar's bind"
    );
    // The metadata lists every listener (two ports of xboard share one address).
    assert_eq!(b.egress.len(), 3);
    for e in &b.egress {
        let want = if e.host.starts_with("redis") {
            "127.0.0.7".to_string()
        } else {
            xboard.to_string()
        };
        assert_eq!(e.bind, want, "{e:?}");
    }
    // An IPv6 gateway.
    let v6: IpAddr = "2001:db8::50".parse().unwrap();
    assert_eq!(
        render_hosts(&ControlPlane::default(), v6, &[]),
        "2001:db8::50 istiod.istio-system.svc\n"
    );
}

#[test]
fn root_certificate_fingerprint_is_of_the_first_certificates_der() {
    assert_eq!(render(&xrayr()).root_cert_sha256, ROOT_CERT_SHA256);
    let chain = format!("{OTHER_CERT}{ROOT_CERT}");
    let b = render_with(
        &ControlPlane::default(),
        &xrayr(),
        &node(),
        MESH_CONFIG,
        &chain,
    )
    .unwrap();
    assert_eq!(b.root_cert_sha256, OTHER_CERT_SHA256);
    assert_eq!(
        b.files.root_cert_pem, chain,
        "the whole bundle is installed"
    );
    for bad in [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nMII!!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    ] {
        let e = render_with(
            &ControlPlane::default(),
            &xrayr(),
            &node(),
            MESH_CONFIG,
            bad,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ConfigMap sigma/istio-ca-root-cert key root-cert.pem: "),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn bundle_version_follows_everything_but_the_token() {
    let cp = ControlPlane::default();
    let base = render(&xrayr());
    assert_eq!(base.bundle_version.len(), 32);
    assert_eq!(
        render(&xrayr()).bundle_version,
        base.bundle_version,
        "deterministic"
    );
    let rotated = render_with(&cp, &xrayr(), &node(), MESH_CONFIG, OTHER_CERT).unwrap();
    assert_ne!(
        rotated.bundle_version, base.bundle_version,
        "root certificate"
    );
    let mesh = render_with(&cp, &xrayr(), &node(), "defaultConfig: {}\n", ROOT_CERT).unwrap();
    assert_ne!(mesh.bundle_version, base.bundle_version, "mesh config");
    let mut moved = node();
    moved.ip_addresses = vec![ip("203.0.113.11", "public")];
    let moved = render_with(&cp, &xrayr(), &moved, MESH_CONFIG, ROOT_CERT).unwrap();
    assert_ne!(
        moved.bundle_version, base.bundle_version,
        "the VPS's address"
    );
    let w = bundle_workload(&MeshTemplate::default(), &xrayr(), &node()).unwrap();
    let archive = IstioProxyArchive {
        url: "https://example.com/istio-sidecar.tar.gz".into(),
        sha256: "ab".repeat(32),
        version: Some("1.24.0".into()),
    };
    let with_proxy = render_bundle(&BundleInput {
        control_plane: &cp,
        workload: &w,
        root_cert_pem: ROOT_CERT,
        mesh_config: MESH_CONFIG,
        eastwest: eastwest(),
        istio_proxy: Some(&archive),
    })
    .unwrap();
    assert_ne!(
        with_proxy.bundle_version, base.bundle_version,
        "proxy archive"
    );
    assert_eq!(with_proxy.istio_proxy, Some(archive));
    assert!(
        base.files.istio_token.is_empty(),
        "the token is not rendered here"
    );
}

#[test]
fn a_rendered_bundle_with_a_token_passes_the_agents_checks() {
    let v = node();
    let b = render(&xrayr());
    let bundle = IstioBootstrapBundle {
        vps_id: v.id,
        hostname: v.hostname.clone(),
        workload_entry: b.workload_entry.clone(),
        files: sigma_types::mesh::IstioBootstrapFiles {
            istio_token: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
            ..b.files.clone()
        },
        token_expires_at: time::OffsetDateTime::UNIX_EPOCH,
        root_cert_sha256: b.root_cert_sha256.clone(),
        bundle_version: b.bundle_version.clone(),
        interception: b.interception,
        egress: b.egress.clone(),
        istio_proxy: None,
    };
    bundle.check().unwrap();
    assert!(is_sha256_hex(&bundle.root_cert_sha256));
}

#[test]
fn only_active_meshed_vps_have_a_workload() {
    let t = MeshTemplate::default();
    let p = xrayr();
    for status in [
        VpsStatus::Provisioning,
        VpsStatus::Retiring,
        VpsStatus::Retired,
        VpsStatus::Deleted,
    ] {
        let mut v = node();
        v.status = status;
        let e = bundle_workload(&t, &p, &v).unwrap_err();
        assert!(
            matches!(&e, Error::NotMeshed(m) if m.contains(status.as_str()) && m.contains("active VPS only")),
            "{e}"
        );
    }
    let mut v = node();
    v.mesh_opt_out = true;
    assert!(
        bundle_workload(&t, &p, &v)
            .unwrap_err()
            .to_string()
            .contains("opted out")
    );
    let off = purpose("xrayr", json!({}));
    assert!(
        bundle_workload(&t, &off, &node())
            .unwrap_err()
            .to_string()
            .contains("not mesh-enabled")
    );
    let mut v = node();
    v.ip_addresses = vec![ip("127.0.0.5", "public")];
    let e = bundle_workload(&t, &p, &v).unwrap_err();
    assert!(e.to_string().contains("no address usable"), "{e}");
    // A sanitised hostname gives the same name as the reconciler's WorkloadEntry.
    let mut v = node();
    v.hostname = "Node_1.Example.com".into();
    let w = bundle_workload(&t, &p, &v).unwrap();
    assert!(
        w.name().starts_with("vps-node-1-example-com--"),
        "{}",
        w.name()
    );
    let state = sigma_mesh::desired_state(&t, std::slice::from_ref(&p), &[v]).unwrap();
    assert!(state.objects.iter().any(|o| o.name() == w.name()));
    // The purpose's own service account.
    let p = purpose(
        "xrayr",
        json!({"enabled": true, "service_account": "xrayr-sa"}),
    );
    let w = bundle_workload(&t, &p, &node()).unwrap();
    assert_eq!(w.service_account, "xrayr-sa");
}

#[test]
fn mesh_config_parsing() {
    let m = parse_mesh_config(MESH_CONFIG, "cm").unwrap();
    assert_eq!(m.trust_domain, "cluster.local");
    assert_eq!(m.proxy_metadata["ISTIO_META_DNS_CAPTURE"], "true");
    assert!(!m.default_config.contains_key("proxyMetadata"));
    let empty = parse_mesh_config("  \n", "cm").unwrap();
    assert_eq!(empty.trust_domain, DEFAULT_TRUST_DOMAIN);
    assert!(empty.default_config.is_empty());
    let nulls = parse_mesh_config("defaultConfig:\ntrustDomain:\n", "cm").unwrap();
    assert_eq!(nulls.trust_domain, DEFAULT_TRUST_DOMAIN);
}

#[test]
fn mesh_yaml_keeps_the_stats_the_agent_and_prometheus_read() {
    // The cluster's default keeps none: the VPS's proxy gets sigma's prefixes.
    let b = render(&xrayr());
    let m = yaml(&b.files.mesh_yaml);
    assert_eq!(
        m["defaultConfig"]["proxyStatsMatcher"],
        json!({"inclusionPrefixes": ["cluster.outbound|", "control_plane"]})
    );
    // A cluster default that lists prefixes keeps them, without duplicates, and its other
    // matcher fields.
    let mesh = "defaultConfig:\n  proxyStatsMatcher:\n    inclusionPrefixes: [\"reporter=\", \"control_plane\"]\n    inclusionRegexps: [\".*circuit_breakers.*\"]\n";
    let b = render_with(&ControlPlane::default(), &xrayr(), &node(), mesh, ROOT_CERT).unwrap();
    let m = yaml(&b.files.mesh_yaml);
    assert_eq!(
        m["defaultConfig"]["proxyStatsMatcher"],
        json!({
            "inclusionPrefixes": ["reporter=", "control_plane", "cluster.outbound|"],
            "inclusionRegexps": [".*circuit_breakers.*"]
        })
    );
}
