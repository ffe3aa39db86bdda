//! Checks of the typed objects beyond the CRD schemas: the rules Istio's webhook and the CRDs'
//! CEL rules enforce, and Kubernetes' metadata rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{
    CaptureMode, IngressListener, MeshObject, Resolution, ServiceEntrySpec, TlsMode, TrafficPolicy,
    WorkloadEntrySpec, WorkloadSelector,
};
use crate::names;
use crate::settings::{Protocol, check_network, check_port_name, check_service_account};

/// Checks the rules Istio's webhook and the CRDs' CEL rules enforce beyond the structural
/// schema, plus Kubernetes' metadata rules: name and label syntax and length, unique port names
/// and numbers, addresses that are IPs, hosts that are not wildcards, unique egress ports. The
/// model should never produce an object that fails; the reasons name the offending field.
pub fn check_object(obj: &MeshObject) -> std::result::Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let m = obj.metadata();
    if !names::is_dns_label(&m.name) {
        errs.push(format!(
            "metadata.name {:?} is not a DNS-1123 label",
            m.name
        ));
    }
    if !names::is_dns_label(&m.namespace) {
        errs.push(format!(
            "metadata.namespace {:?} is not a DNS-1123 label",
            m.namespace
        ));
    }
    check_labels("metadata.labels", "", &m.labels, &mut errs);
    for k in m.annotations.keys() {
        if !names::is_label_key(k) {
            errs.push(format!("metadata.annotations: invalid key {k:?}"));
        }
    }
    match obj {
        MeshObject::WorkloadEntry(r) => check_workload("spec", &r.spec, true, &mut errs),
        MeshObject::WorkloadGroup(r) => {
            if let Some(md) = &r.spec.metadata {
                check_labels("spec.metadata.labels", "", &md.labels, &mut errs);
            }
            check_workload("spec.template", &r.spec.template, false, &mut errs);
            if let Some(p) = &r.spec.probe {
                let methods =
                    usize::from(p.http_get.is_some()) + usize::from(p.tcp_socket.is_some());
                if methods != 1 {
                    errs.push("spec.probe: exactly one of httpGet, tcpSocket".into());
                }
                if let Some(h) = &p.http_get {
                    check_port_u32("spec.probe.httpGet.port", h.port, &mut errs);
                    if !h.path.starts_with('/') {
                        errs.push(format!(
                            "spec.probe.httpGet.path {:?} must start with '/'",
                            h.path
                        ));
                    }
                }
                if let Some(t) = &p.tcp_socket {
                    check_port_u32("spec.probe.tcpSocket.port", t.port, &mut errs);
                }
            }
        }
        MeshObject::ServiceEntry(r) => {
            let s = &r.spec;
            if s.hosts.is_empty() {
                errs.push("spec.hosts: at least one host".into());
            }
            for h in &s.hosts {
                if h == "*" || !names::is_dns_subdomain(h) {
                    errs.push(format!("spec.hosts: {h:?} is not a DNS name"));
                }
            }
            if s.ports.is_empty() {
                errs.push("spec.ports: a STATIC ServiceEntry needs ports".into());
            }
            let mut port_names = BTreeSet::new();
            let mut numbers = BTreeSet::new();
            for (i, p) in s.ports.iter().enumerate() {
                if let Err(r) = check_port_name(&p.name) {
                    errs.push(format!("spec.ports[{i}].name: {r}"));
                }
                if !port_names.insert(&p.name) {
                    errs.push(format!("spec.ports[{i}].name {:?} is duplicated", p.name));
                }
                if !numbers.insert(p.number) {
                    errs.push(format!("spec.ports[{i}].number {} is duplicated", p.number));
                }
                check_port_u32(&format!("spec.ports[{i}].number"), p.number, &mut errs);
                if let Some(t) = p.target_port {
                    check_port_u32(&format!("spec.ports[{i}].targetPort"), t, &mut errs);
                }
                check_protocol(&format!("spec.ports[{i}].protocol"), &p.protocol, &mut errs);
            }
            if s.endpoints.is_empty() {
                check_selector(
                    "spec.workloadSelector",
                    s.workload_selector.as_ref(),
                    &mut errs,
                );
            } else if s.workload_selector.is_some() {
                // Istio's ValidateServiceEntry: one or the other.
                errs.push("spec: workloadSelector and endpoints are mutually exclusive".into());
            }
            check_endpoints(s, &mut errs);
            for (i, ns) in s.export_to.iter().enumerate() {
                if ns != "." && ns != "*" && !names::is_dns_label(ns) {
                    errs.push(format!("spec.exportTo[{i}] {ns:?} is not a namespace"));
                }
            }
        }
        MeshObject::Sidecar(r) => {
            let s = &r.spec;
            check_selector(
                "spec.workloadSelector",
                s.workload_selector.as_ref(),
                &mut errs,
            );
            if s.egress.is_empty() && s.ingress.is_empty() && s.outbound_traffic_policy.is_none() {
                errs.push("spec: empty Sidecar".into());
            }
            check_ingress(&s.ingress, &mut errs);
            let mut ports = BTreeSet::new();
            for (i, l) in s.egress.iter().enumerate() {
                let f = format!("spec.egress[{i}]");
                match &l.port {
                    None if i + 1 != s.egress.len() => {
                        errs.push(format!("{f}: a listener without port must be the last"))
                    }
                    None => {}
                    Some(p) => {
                        check_port_u32(&format!("{f}.port.number"), p.number, &mut errs);
                        if !ports.insert(p.number) {
                            errs.push(format!("{f}.port.number {} is duplicated", p.number));
                        }
                        if !p.name.is_empty()
                            && let Err(r) = check_port_name(&p.name)
                        {
                            errs.push(format!("{f}.port.name: {r}"));
                        }
                        check_protocol(&format!("{f}.port.protocol"), &p.protocol, &mut errs);
                    }
                }
                if let Some(b) = &l.bind
                    && b.parse::<IpAddr>().is_err()
                {
                    errs.push(format!("{f}.bind {b:?} is not an IP address"));
                }
                if l.hosts.is_empty() {
                    errs.push(format!("{f}.hosts: at least one host"));
                }
                for h in &l.hosts {
                    if !sidecar_host_ok(h) {
                        errs.push(format!("{f}.hosts: {h:?} is not namespace/dnsName"));
                    }
                }
            }
        }
        MeshObject::DestinationRule(r) => {
            let s = &r.spec;
            if s.host == "*" || !names::is_dns_subdomain(&s.host) {
                errs.push(format!("spec.host {:?} is not a DNS name", s.host));
            }
            if let Some(tp) = &s.traffic_policy {
                check_traffic_policy(tp, &mut errs);
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// Istio's rules for ingress listeners (`ValidateSidecar` in pkg/config/validation: port name,
/// protocol and number valid, ports unique, `bind` an IP, `defaultEndpoint` one of
/// `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`, `:<port>` or
/// `unix://<absolute path or @abstract>`), plus sigma's own: capture mode `NONE` (the VPS has
/// no interception, so Envoy must bind the port), a `defaultEndpoint` always (without one Envoy
/// forwards to the original destination, which for a bound listener is itself), not on the
/// listener's own port, and no UDP (Istio builds no filter chain for it).
fn check_ingress(ingress: &[IngressListener], errs: &mut Vec<String>) {
    let mut ports = BTreeSet::new();
    for (i, l) in ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        let p = &l.port;
        check_port_u32(&format!("{f}.port.number"), p.number, errs);
        if !ports.insert(p.number) {
            errs.push(format!("{f}.port.number {} is duplicated", p.number));
        }
        if !p.name.is_empty()
            && let Err(r) = check_port_name(&p.name)
        {
            errs.push(format!("{f}.port.name: {r}"));
        }
        check_protocol(&format!("{f}.port.protocol"), &p.protocol, errs);
        if p.protocol == Protocol::Udp.as_str() {
            errs.push(format!("{f}.port.protocol: Istio builds no UDP listener"));
        }
        if let Some(b) = &l.bind
            && b.parse::<IpAddr>().is_err()
        {
            errs.push(format!("{f}.bind {b:?} is not an IP address"));
        }
        if l.capture_mode != Some(CaptureMode::None) {
            errs.push(format!(
                "{f}.captureMode: must be NONE, the VPS's traffic is not intercepted"
            ));
        }
        match l.default_endpoint.as_deref() {
            None => errs.push(format!("{f}.defaultEndpoint: required")),
            Some(ep) => match default_endpoint_port(ep) {
                Err(r) => errs.push(format!("{f}.defaultEndpoint {ep:?}: {r}")),
                Ok(Some(port)) if u32::from(port) == p.number => errs.push(format!(
                    "{f}.defaultEndpoint {ep:?}: forwards to the listener's own port"
                )),
                Ok(_) => {}
            },
        }
    }
}

/// The port of a `defaultEndpoint` Istio accepts (`None` for a Unix socket), or why it does not.
fn default_endpoint_port(ep: &str) -> std::result::Result<Option<u16>, String> {
    if let Some(path) = ep.strip_prefix("unix://") {
        return if path.starts_with('@') && path.len() > 1
            || path.starts_with('/') && !path.ends_with('/')
        {
            Ok(None)
        } else {
            Err("a Unix socket must be an absolute file path or @abstract".into())
        };
    }
    let form =
        "must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://<path>";
    let (host, port) = ep.rsplit_once(':').ok_or_else(|| form.to_string())?;
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") {
        return Err(form.into());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with(['+', '0']) => Ok(Some(p)),
        _ => Err(format!("{port:?} is not a port (1-65535)")),
    }
}

/// `field` and `sub` are only joined when there is an error to report: this check runs for
/// every WorkloadEntry of the fleet.
fn check_labels(field: &str, sub: &str, labels: &BTreeMap<String, String>, errs: &mut Vec<String>) {
    for (k, v) in labels {
        if !names::is_label_key(k) {
            errs.push(format!("{field}{sub}: invalid key {k:?}"));
        }
        if !names::is_label_value(v) {
            errs.push(format!("{field}{sub}.{k}: invalid value {v:?}"));
        }
    }
}

fn check_workload(field: &str, w: &WorkloadEntrySpec, entry: bool, errs: &mut Vec<String>) {
    if entry {
        // The CRD's CEL rule wants an address or a network; sigma always gives an IP.
        if w.address.parse::<IpAddr>().is_err() {
            errs.push(format!(
                "{field}.address {:?} is not an IP address",
                w.address
            ));
        }
    } else if !w.address.is_empty() {
        errs.push(format!("{field}.address must be empty in a template"));
    }
    check_labels(field, ".labels", &w.labels, errs);
    if let Some(n) = &w.network
        && let Err(r) = check_network(n)
    {
        errs.push(format!("{field}.network: {r}"));
    }
    if let Some(l) = &w.locality
        && (l.is_empty()
            || l.split('/').count() > 3
            || l.split('/').any(|c| !names::is_dns_label(c)))
    {
        errs.push(format!("{field}.locality {l:?} is not region/zone/subzone"));
    }
    if let Some(sa) = &w.service_account
        && let Err(r) = check_service_account(sa)
    {
        errs.push(format!("{field}.serviceAccount: {r}"));
    }
    if !entry && !w.ports.is_empty() {
        errs.push(format!("{field}.ports must be empty in a template"));
    }
    // The CRD allows 128 ports, names matching a DNS label of < 63 characters, numbers
    // 1-65535, and no ports on a Unix-socket address (the address check above covers that).
    if w.ports.len() > crate::settings::MAX_PORTS {
        errs.push(format!(
            "{field}.ports: more than {} ports",
            crate::settings::MAX_PORTS
        ));
    }
    for (name, port) in &w.ports {
        if let Err(r) = check_port_name(name) {
            errs.push(format!("{field}.ports: name {name:?}: {r}"));
        }
        check_port_u32(&format!("{field}.ports.{name}"), *port, errs);
    }
}

/// Istio's rules for inline endpoints: with `STATIC` resolution every address is an IP, with
/// DNS resolution a DNS name or an IP; ports named like the service's ports.
fn check_endpoints(s: &ServiceEntrySpec, errs: &mut Vec<String>) {
    if s.resolution == Some(Resolution::DnsRoundRobin) && s.endpoints.len() > 1 {
        errs.push("spec.endpoints: DNS_ROUND_ROBIN allows one endpoint".into());
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        let ip = e.address.parse::<IpAddr>().is_ok();
        match s.resolution {
            Some(Resolution::Static) if !ip => errs.push(format!(
                "{f}.address {:?} must be an IP for STATIC",
                e.address
            )),
            Some(Resolution::Dns | Resolution::DnsRoundRobin)
                if !ip && !names::is_dns_subdomain(&e.address) =>
            {
                errs.push(format!("{f}.address {:?} is not a DNS name", e.address))
            }
            Some(Resolution::None) | None => {
                errs.push(format!("{f}: endpoints need STATIC or DNS resolution"))
            }
            _ => {}
        }
        for (name, port) in &e.ports {
            if !s.ports.iter().any(|p| &p.name == name) {
                errs.push(format!("{f}.ports.{name}: no service port of that name"));
            }
            check_port_u32(&format!("{f}.ports.{name}"), *port, errs);
        }
    }
}

/// Istio's `validateTrafficPolicy`: at least one field, durations that parse, and (sigma's
/// rule) no PROXY header inside Istio's mTLS, where the upstream proxy, not the application,
/// would receive it.
fn check_traffic_policy(tp: &TrafficPolicy, errs: &mut Vec<String>) {
    if tp.tls.is_none() && tp.connection_pool.is_none() && tp.proxy_protocol.is_none() {
        errs.push("spec.trafficPolicy: traffic policy must have at least one field".into());
    }
    if let Some(cp) = &tp.connection_pool {
        match &cp.tcp {
            None => errs.push("spec.trafficPolicy.connectionPool: at least one field".into()),
            Some(t) => {
                if let Some(d) = &t.connect_timeout
                    && !is_duration_ms(d)
                {
                    errs.push(format!(
                        "spec.trafficPolicy.connectionPool.tcp.connectTimeout {d:?} is not a duration of at least 1ms"
                    ));
                }
            }
        }
    }
    if tp.proxy_protocol.is_some()
        && tp.tls.as_ref().and_then(|t| t.mode) == Some(TlsMode::IstioMutual)
    {
        errs.push("spec.trafficPolicy.proxyProtocol: not with ISTIO_MUTUAL".into());
    }
}

/// `<n>ms` with n ≥ 1: the only duration form sigma writes (Istio's minimum is 1ms).
fn is_duration_ms(d: &str) -> bool {
    d.strip_suffix("ms")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n >= 1 && !d.starts_with('0'))
}

fn check_port_u32(field: &str, p: u32, errs: &mut Vec<String>) {
    if p == 0 || p > 65535 {
        errs.push(format!("{field}: {p} is not a port (1-65535)"));
    }
}

fn check_protocol(field: &str, p: &str, errs: &mut Vec<String>) {
    if let Err(r) = p.parse::<Protocol>() {
        errs.push(format!("{field}: {r}"));
    }
}

fn check_selector(field: &str, sel: Option<&WorkloadSelector>, errs: &mut Vec<String>) {
    match sel {
        None => errs.push(format!("{field}: sigma always selects by app")),
        Some(s) if s.labels.is_empty() => errs.push(format!("{field}.labels: empty")),
        Some(s) => {
            check_labels(field, ".labels", &s.labels, errs);
            for (k, v) in &s.labels {
                if v.contains('*') {
                    errs.push(format!("{field}.labels.{k}: wildcards are not supported"));
                }
            }
        }
    }
}

fn sidecar_host_ok(h: &str) -> bool {
    let Some((ns, name)) = h.split_once('/') else {
        return false;
    };
    let ns_ok = matches!(ns, "*" | "." | "~") || names::is_dns_label(ns);
    let name_ok = name == "*"
        || names::is_dns_subdomain(name)
        || name.strip_prefix("*.").is_some_and(names::is_dns_subdomain);
    ns_ok && name_ok
}
