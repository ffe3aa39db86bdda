//! Every generated object is checked against the `v1` schema of its CRD in Istio 1.30.3's
//! bundle, with a structural-schema validator that is itself tested on broken objects. CEL
//! rules cannot be evaluated; each rule the generated objects meet must be re-implemented by
//! [`sigma_mesh::check_object`], which a witness object for the rule proves.

mod fixtures;
mod structural;

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};
use sigma_mesh::objects::*;
use sigma_mesh::{Kind, MeshObject, MeshTemplate, check_object, desired_state, to_yaml};
use structural::{Crds, load_crds, validate_value};

/// The rich inventory with its routes, so routes' ServiceEntries (selector and inline
/// endpoints), DestinationRules (connect timeout, PROXY header) and per-VPS Sidecars are
/// checked too.
fn generated() -> Vec<MeshObject> {
    let state = sigma_mesh::desired_state_with_routes(
        &MeshTemplate::default(),
        &fixtures::rich_purposes(),
        &fixtures::rich_vps(),
        &fixtures::rich_routes(),
    )
    .unwrap();
    assert!(state.skipped.is_empty(), "{:?}", state.skipped);
    for r in &state.routes {
        assert_eq!(r.placement.mode(), "mesh", "{r:?}");
    }
    state.objects
}

/// The first object of `kind`; for WorkloadGroups the first with an HTTP probe, for Sidecars
/// the first with ingress and port-bound egress listeners, for WorkloadEntries the first with
/// ports, which the breakages need.
fn of_kind(objects: &[MeshObject], kind: Kind) -> Value {
    let o = objects
        .iter()
        .find(|o| {
            o.kind() == kind
                && match o {
                    MeshObject::WorkloadGroup(g) => {
                        g.spec.probe.as_ref().is_some_and(|p| p.http_get.is_some())
                    }
                    // Ingress and egress listeners both, for the breakages of either.
                    MeshObject::Sidecar(s) => {
                        !s.spec.ingress.is_empty() && s.spec.egress[0].port.is_some()
                    }
                    MeshObject::WorkloadEntry(w) => !w.spec.ports.is_empty(),
                    _ => true,
                }
        })
        .unwrap_or_else(|| panic!("no {kind}"));
    serde_json::to_value(o).unwrap()
}

#[test]
fn bundle_has_v1_schemas_for_every_generated_kind() {
    let crds = load_crds();
    for k in Kind::ALL {
        let crd = &crds.by_kind[k.as_str()];
        assert_eq!(crd.group, "networking.istio.io");
        let v1 = &crd.versions["v1"];
        assert!(v1.served, "{k} v1 not served");
        assert!(v1.schema["properties"]["spec"].is_object(), "{k}");
    }
}

#[test]
fn generated_objects_pass_istio_crd_schemas() {
    let crds = load_crds();
    let objects = generated();
    let kinds: BTreeSet<Kind> = objects.iter().map(MeshObject::kind).collect();
    assert_eq!(
        kinds.len(),
        Kind::ALL.len(),
        "fixture must produce every kind"
    );
    let mut rules_met = BTreeSet::new();
    for o in &objects {
        let v = serde_json::to_value(o).unwrap();
        let report = crds.validate(&v);
        assert!(
            report.errors.is_empty(),
            "{}: {:#?}\n{v:#}",
            o.key(),
            report.errors
        );
        check_object(o).unwrap_or_else(|e| panic!("{}: {e:?}", o.key()));
        rules_met.extend(report.cel_rules.into_iter().map(|(_, r)| r));
    }
    let known: BTreeSet<String> = cel_witnesses()
        .into_iter()
        .map(|(r, _)| r.to_string())
        .collect();
    let unknown: Vec<&String> = rules_met.iter().filter(|r| !known.contains(*r)).collect();
    assert!(
        unknown.is_empty(),
        "CEL rules without a model check: {unknown:#?}"
    );
    assert!(
        rules_met.len() >= 8,
        "suspiciously few CEL rules met: {rules_met:#?}"
    );
}

/// The WorkloadGroup of every kind of VPS (hashed and truncated names, IPv6 and private
/// addresses, no provider or country, each probe kind, a fixed network) passes the schema and
/// the model's checks, with its workload labels present.
#[test]
fn every_vps_workload_group_passes_istio_crd_schemas() {
    let crds = load_crds();
    for template in [
        MeshTemplate::default(),
        MeshTemplate {
            network: sigma_mesh::NetworkMode::Fixed("fleet".into()),
            version: "2026.12".into(),
            ..MeshTemplate::default()
        },
    ] {
        let state =
            desired_state(&template, &fixtures::rich_purposes(), &fixtures::rich_vps()).unwrap();
        let groups: Vec<&Resource<WorkloadGroupSpec>> = state
            .objects
            .iter()
            .filter_map(|o| match o {
                MeshObject::WorkloadGroup(r) => Some(r),
                _ => None,
            })
            .collect();
        let entries = state
            .objects
            .iter()
            .filter(|o| o.kind() == Kind::WorkloadEntry)
            .count();
        assert_eq!(groups.len(), entries, "one group per entry");
        assert!(groups.len() >= 4);
        for g in groups {
            let o = MeshObject::WorkloadGroup(g.clone());
            let v = serde_json::to_value(&o).unwrap();
            let report = crds.validate(&v);
            assert!(report.errors.is_empty(), "{:#?}\n{v:#}", report.errors);
            check_object(&o).unwrap_or_else(|e| panic!("{}: {e:?}", o.key()));
            let labels = &v["spec"]["metadata"]["labels"];
            for k in [
                "app",
                "version",
                CANONICAL_NAME_LABEL,
                CANONICAL_REVISION_LABEL,
                VPS_ID_LABEL,
            ] {
                assert!(labels[k].is_string(), "{k} in {v:#}");
            }
        }
    }
}

#[test]
fn yaml_export_passes_istio_crd_schemas() {
    let crds = load_crds();
    let objects = generated();
    let yaml = to_yaml(&objects).unwrap();
    let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), objects.len());
    for d in &docs {
        let report = crds.validate(d);
        assert!(report.errors.is_empty(), "{:#?}\n{d:#}", report.errors);
        // What the YAML says is what the typed object says.
        let back = MeshObject::from_json(d.clone()).unwrap();
        assert!(objects.contains(&back), "{d:#}");
    }
}

/// A broken version of a generated object, and a piece of the error it must cause.
struct Breakage {
    kind: Kind,
    what: &'static str,
    apply: fn(&mut Value),
    expect: &'static str,
}

#[test]
fn validator_rejects_broken_objects() {
    let crds = load_crds();
    let objects = generated();
    let cases = [
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "misspelt spec field",
            apply: |v| v["spec"]["adress"] = json!("1.2.3.4"),
            expect: ".spec.adress: unknown field",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "address too long",
            apply: |v| v["spec"]["address"] = json!("a".repeat(257)),
            expect: "longer than 256",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "label map value not a string",
            apply: |v| v["spec"]["labels"]["app"] = json!(1),
            expect: ".spec.labels.app: string expected",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "weight above uint32",
            apply: |v| v["spec"]["weight"] = json!(4294967296u64),
            expect: "exceeds the maximum",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "unknown metadata field",
            apply: |v| v["metadata"]["lables"] = json!({}),
            expect: "unexpected metadata field",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "invalid label value",
            apply: |v| v["metadata"]["labels"]["provider"] = json!("Hetzner Online"),
            expect: "invalid label value",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "name not a subdomain",
            apply: |v| v["metadata"]["name"] = json!("VPS_1"),
            expect: "not a DNS-1123 subdomain",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "spec missing",
            apply: |v| {
                v.as_object_mut().unwrap().remove("spec");
            },
            expect: ".spec: required",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "unserved version",
            apply: |v| v["apiVersion"] = json!("networking.istio.io/v2"),
            expect: "not served",
        },
        Breakage {
            kind: Kind::WorkloadGroup,
            what: "workload label value not a string",
            apply: |v| v["spec"]["metadata"]["labels"]["sigma.io/vps-id"] = json!(7),
            expect: ".spec.metadata.labels.sigma.io/vps-id: string expected",
        },
        Breakage {
            kind: Kind::WorkloadGroup,
            what: "two probe methods",
            apply: |v| v["spec"]["probe"]["tcpSocket"] = json!({"port": 22}),
            expect: "oneOf: 2 of 5",
        },
        Breakage {
            kind: Kind::WorkloadGroup,
            what: "probe header name pattern",
            apply: |v| {
                v["spec"]["probe"]["httpGet"]["httpHeaders"] =
                    json!([{"name": "bad header", "value": "x"}])
            },
            expect: "does not match",
        },
        Breakage {
            kind: Kind::WorkloadGroup,
            what: "int32 overflow",
            apply: |v| v["spec"]["probe"]["periodSeconds"] = json!(2147483648u64),
            expect: "does not fit the format",
        },
        Breakage {
            kind: Kind::WorkloadGroup,
            what: "template missing",
            apply: |v| {
                v["spec"].as_object_mut().unwrap().remove("template");
            },
            expect: ".spec.template: required",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "wrong location enum",
            apply: |v| v["spec"]["location"] = json!("MESH_INSIDE"),
            expect: "is not one of",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "port number as string",
            apply: |v| v["spec"]["ports"][0]["number"] = json!("443"),
            expect: "integer expected, got string",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "duplicate port name in a map list",
            apply: |v| {
                let p = v["spec"]["ports"][0].clone();
                v["spec"]["ports"].as_array_mut().unwrap().push(p);
            },
            expect: "duplicate map-list key",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "no hosts",
            apply: |v| v["spec"]["hosts"] = json!([]),
            expect: "fewer than 1 items",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "too many hosts",
            apply: |v| v["spec"]["hosts"] = json!(vec!["a.example.com"; 257]),
            expect: "more than 256 items",
        },
        Breakage {
            kind: Kind::ServiceEntry,
            what: "selector value too long",
            apply: |v| v["spec"]["workloadSelector"]["labels"]["app"] = json!("a".repeat(64)),
            expect: "longer than 63",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "wrong capture mode",
            apply: |v| v["spec"]["egress"][0]["captureMode"] = json!("None"),
            expect: "is not one of",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "egress listener without hosts",
            apply: |v| {
                v["spec"]["egress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("hosts");
            },
            expect: ".hosts: required",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "ingress listener without port",
            apply: |v| {
                v["spec"]["ingress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("port");
            },
            expect: ".port: required",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "wrong ingress capture mode",
            apply: |v| v["spec"]["ingress"][0]["captureMode"] = json!("NO"),
            expect: "is not one of",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "ingress default endpoint not a string",
            apply: |v| v["spec"]["ingress"][0]["defaultEndpoint"] = json!(8443),
            expect: "string expected",
        },
        Breakage {
            kind: Kind::WorkloadEntry,
            what: "port map value not an integer",
            apply: |v| {
                let name = v["spec"]["ports"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone();
                v["spec"]["ports"][name] = json!("15100");
            },
            expect: "integer expected, got string",
        },
        Breakage {
            kind: Kind::Sidecar,
            what: "wrong outbound mode",
            apply: |v| v["spec"]["outboundTrafficPolicy"]["mode"] = json!("REGISTRY"),
            expect: "is not one of",
        },
        Breakage {
            kind: Kind::DestinationRule,
            what: "wrong TLS mode",
            apply: |v| v["spec"]["trafficPolicy"]["tls"]["mode"] = json!("ISTIO_MTLS"),
            expect: "is not one of",
        },
        Breakage {
            kind: Kind::DestinationRule,
            what: "nullable field may be null, others not",
            apply: |v| {
                v["spec"]["trafficPolicy"]["tls"]["insecureSkipVerify"] = Value::Null;
                v["spec"]["host"] = Value::Null;
            },
            expect: ".spec.host: null is not allowed",
        },
        Breakage {
            kind: Kind::DestinationRule,
            what: "unknown nested field",
            apply: |v| v["spec"]["trafficPolicy"]["tls"]["mdoe"] = json!("ISTIO_MUTUAL"),
            expect: ".spec.trafficPolicy.tls.mdoe: unknown field",
        },
    ];
    for c in &cases {
        let mut v = of_kind(&objects, c.kind);
        assert!(
            crds.validate(&v).errors.is_empty(),
            "{}: baseline fails",
            c.what
        );
        (c.apply)(&mut v);
        let errors = crds.validate(&v).errors;
        assert!(
            errors.iter().any(|e| e.contains(c.expect)),
            "{} ({}): expected {:?} in {errors:#?}",
            c.kind,
            c.what,
            c.expect
        );
        if c.what.starts_with("nullable") {
            assert_eq!(
                errors.len(),
                1,
                "insecureSkipVerify is nullable: {errors:#?}"
            );
        }
    }
}

#[test]
fn validator_handles_schema_features_it_claims() {
    let int_or_string = json!({"type": "object", "properties": {"x": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
    assert!(
        validate_value(&int_or_string, &json!({"x": 1}))
            .errors
            .is_empty()
    );
    assert!(
        validate_value(&int_or_string, &json!({"x": "1"}))
            .errors
            .is_empty()
    );
    assert!(
        !validate_value(&int_or_string, &json!({"x": true}))
            .errors
            .is_empty()
    );

    let preserve = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {"type": "string"}}});
    assert!(
        validate_value(&preserve, &json!({"a": "x", "b": 1}))
            .errors
            .is_empty()
    );
    assert!(
        !validate_value(&preserve, &json!({"a": 1}))
            .errors
            .is_empty()
    );

    let strict = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    assert!(!validate_value(&strict, &json!({"b": 1})).errors.is_empty());

    let unknown_keyword = json!({"type": "string", "x-kubernetes-embedded-resource": true});
    let e = validate_value(&unknown_keyword, &json!("x")).errors;
    assert!(e.iter().any(|e| e.contains("does not support")), "{e:?}");

    let any_of = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "anyOf": [{"required": ["a"]}, {"required": ["b"]}]});
    assert!(
        validate_value(&any_of, &json!({"b": "x"}))
            .errors
            .is_empty()
    );
    assert!(!validate_value(&any_of, &json!({})).errors.is_empty());

    let all_of_not = json!({"type": "object", "properties": {"a": {"type": "string"}}, "allOf": [{"not": {"required": ["a"]}}]});
    assert!(validate_value(&all_of_not, &json!({})).errors.is_empty());
    assert!(
        !validate_value(&all_of_not, &json!({"a": "x"}))
            .errors
            .is_empty()
    );

    let set =
        json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}});
    assert!(!validate_value(&set, &json!(["a", "a"])).errors.is_empty());

    let dt = json!({"type": "string", "format": "date-time"});
    assert!(
        validate_value(&dt, &json!("2024-01-02T03:04:05Z"))
            .errors
            .is_empty()
    );
    assert!(!validate_value(&dt, &json!("yesterday")).errors.is_empty());

    let cel = json!({"type": "integer", "x-kubernetes-validations": [{"rule": "self > 0", "message": "m"}]});
    let r = validate_value(&cel, &json!(0));
    assert!(r.errors.is_empty());
    assert_eq!(r.cel_rules, vec![(String::new(), "self > 0".to_string())]);
}

fn generated_of<T>(kind: Kind, pick: impl Fn(&MeshObject) -> Option<T>) -> T {
    generated()
        .iter()
        .filter(|o| o.kind() == kind)
        .find_map(pick)
        .unwrap()
}

fn entry() -> Resource<WorkloadEntrySpec> {
    generated_of(Kind::WorkloadEntry, |o| match o {
        MeshObject::WorkloadEntry(r) => Some(r.clone()),
        _ => None,
    })
}

fn group() -> Resource<WorkloadGroupSpec> {
    generated_of(Kind::WorkloadGroup, |o| match o {
        MeshObject::WorkloadGroup(r) if r.spec.probe.as_ref()?.http_get.is_some() => {
            Some(r.clone())
        }
        _ => None,
    })
}

/// A route's ServiceEntry with an inline backend.
fn backend_entry() -> Resource<ServiceEntrySpec> {
    generated_of(Kind::ServiceEntry, |o| match o {
        MeshObject::ServiceEntry(r) if !r.spec.endpoints.is_empty() => Some(r.clone()),
        _ => None,
    })
}

/// A route's DestinationRule (with a connect timeout).
fn route_rule() -> Resource<DestinationRuleSpec> {
    generated_of(Kind::DestinationRule, |o| match o {
        MeshObject::DestinationRule(r)
            if r.spec.traffic_policy.as_ref()?.connection_pool.is_some() =>
        {
            Some(r.clone())
        }
        _ => None,
    })
}

fn service_entry() -> Resource<ServiceEntrySpec> {
    generated_of(Kind::ServiceEntry, |o| match o {
        MeshObject::ServiceEntry(r) if r.spec.ports.len() >= 2 => Some(r.clone()),
        _ => None,
    })
}

fn sidecar() -> Resource<SidecarSpec> {
    generated_of(Kind::Sidecar, |o| match o {
        MeshObject::Sidecar(r) if !r.spec.ingress.is_empty() => Some(r.clone()),
        _ => None,
    })
}

fn entry_with_ports() -> Resource<WorkloadEntrySpec> {
    generated_of(Kind::WorkloadEntry, |o| match o {
        MeshObject::WorkloadEntry(r) if !r.spec.ports.is_empty() => Some(r.clone()),
        _ => None,
    })
}

/// Each CEL rule the generated objects meet, with an object that breaks it. `None` means sigma's
/// types cannot hold the fields the rule reads (endpoints, addresses, ports of a WorkloadEntry),
/// so no generated object can break it.
#[allow(clippy::type_complexity)]
fn cel_witnesses() -> Vec<(&'static str, Option<fn() -> MeshObject>)> {
    const PORT: &str = "0 < self && self <= 65535";
    const UDS_ABS: &str = r#"self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true"#;
    const UDS_DIR: &str = r#"self.startsWith("unix://") ? !self.endsWith("/") : true"#;
    const UDS_PORTS: &str = r#"(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true"#;
    vec![
        (
            "has(self.address) || has(self.network)",
            Some(|| {
                let mut r = entry();
                r.spec.address.clear();
                MeshObject::WorkloadEntry(r)
            }),
        ),
        (
            UDS_ABS,
            Some(|| {
                let mut r = entry();
                r.spec.address = "unix://relative".into();
                MeshObject::WorkloadEntry(r)
            }),
        ),
        (
            UDS_DIR,
            Some(|| {
                let mut r = entry();
                r.spec.address = "unix:///run/".into();
                MeshObject::WorkloadEntry(r)
            }),
        ),
        (
            UDS_PORTS,
            Some(|| {
                let mut r = entry_with_ports();
                r.spec.address = "unix:///run/app.sock".into();
                MeshObject::WorkloadEntry(r)
            }),
        ),
        (
            r#"self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))"#,
            Some(|| {
                let mut r = entry_with_ports();
                r.spec.ports.insert("x".repeat(63), 15100);
                MeshObject::WorkloadEntry(r)
            }),
        ),
        (
            PORT,
            Some(|| {
                let mut r = group();
                r.spec
                    .probe
                    .as_mut()
                    .unwrap()
                    .http_get
                    .as_mut()
                    .unwrap()
                    .port = 0;
                MeshObject::WorkloadGroup(r)
            }),
        ),
        (
            r#"self != "*""#,
            Some(|| {
                let mut r = service_entry();
                r.spec.hosts = vec!["*".into()];
                MeshObject::ServiceEntry(r)
            }),
        ),
        (
            "self.all(l1, self.exists_one(l2, l1.number == l2.number))",
            Some(|| {
                let mut r = service_entry();
                let mut p = r.spec.ports[0].clone();
                p.name = "other".into();
                r.spec.ports.push(p);
                MeshObject::ServiceEntry(r)
            }),
        ),
        (
            r#"!self.contains("*")"#,
            Some(|| {
                let mut r = sidecar();
                r.spec
                    .workload_selector
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("app".into(), "x*".into());
                MeshObject::Sidecar(r)
            }),
        ),
        (
            "duration(self) >= duration('1ms')",
            Some(|| {
                let mut r = route_rule();
                let tp = r.spec.traffic_policy.as_mut().unwrap();
                tp.connection_pool.as_mut().unwrap().tcp = Some(TcpSettings {
                    connect_timeout: Some("0ms".into()),
                });
                MeshObject::DestinationRule(r)
            }),
        ),
        // ServiceEntry rules on endpoints (a route's backend) and addresses (never set).
        (
            "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1",
            Some(|| {
                let mut r = backend_entry();
                r.spec.workload_selector = service_entry().spec.workload_selector;
                MeshObject::ServiceEntry(r)
            }),
        ),
        (
            r#"!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))"#,
            None,
        ),
        (
            r#"((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true"#,
            Some(|| {
                let mut r = backend_entry();
                r.spec.resolution = Some(Resolution::None);
                MeshObject::ServiceEntry(r)
            }),
        ),
        (
            r#"((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? ((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true"#,
            Some(|| {
                let mut r = backend_entry();
                r.spec.resolution = Some(Resolution::DnsRoundRobin);
                let e = r.spec.endpoints[0].clone();
                r.spec.endpoints.push(e);
                MeshObject::ServiceEntry(r)
            }),
        ),
    ]
}

#[test]
fn every_cel_rule_has_a_failing_witness_in_the_model_checks() {
    for (rule, witness) in cel_witnesses() {
        if let Some(make) = witness {
            let o = make();
            assert!(
                check_object(&o).is_err(),
                "model check misses CEL rule {rule}: {o:#?}"
            );
        }
    }
    // The port rule also guards ServiceEntry ports and target ports.
    let mut r = service_entry();
    r.spec.ports[0].number = 70000;
    assert!(check_object(&MeshObject::ServiceEntry(r)).is_err());
    let mut r = service_entry();
    r.spec.ports[1].target_port = Some(0);
    assert!(check_object(&MeshObject::ServiceEntry(r)).is_err());
    // And WorkloadEntry ports.
    let mut r = entry_with_ports();
    r.spec.ports.insert("zero".into(), 0);
    assert!(check_object(&MeshObject::WorkloadEntry(r)).is_err());
}

#[test]
fn crds_cover_nothing_sigma_does_not_expect() {
    // The validator is only as good as its view of the bundle: make sure the schema of each
    // generated kind is the one that declares the fields sigma serializes.
    let crds: Crds = load_crds();
    let se =
        &crds.by_kind["ServiceEntry"].versions["v1"].schema["properties"]["spec"]["properties"];
    for f in [
        "hosts",
        "location",
        "resolution",
        "ports",
        "workloadSelector",
    ] {
        assert!(se[f].is_object(), "ServiceEntry.spec.{f}");
    }
    let sc = &crds.by_kind["Sidecar"].versions["v1"].schema["properties"]["spec"]["properties"];
    for f in [
        "workloadSelector",
        "ingress",
        "egress",
        "outboundTrafficPolicy",
    ] {
        assert!(sc[f].is_object(), "Sidecar.spec.{f}");
    }
    let ingress = &sc["ingress"]["items"]["properties"];
    for f in ["port", "bind", "captureMode", "defaultEndpoint"] {
        assert!(ingress[f].is_object(), "Sidecar.spec.ingress[].{f}");
    }
    let we =
        &crds.by_kind["WorkloadEntry"].versions["v1"].schema["properties"]["spec"]["properties"];
    assert!(we["ports"].is_object(), "WorkloadEntry.spec.ports");
}
