//! What the agent learns about its host: hostname, addresses, system info.

use std::net::IpAddr;

use sigma_types::{IpAddress, SystemInfo};

/// Interface name prefixes of container and virtual bridges, whose addresses are not the
/// VPS's own.
const SKIPPED_INTERFACES: &[&str] = &[
    "docker", "br-", "veth", "cni", "flannel", "cali", "virbr", "lxc", "lxd", "podman", "kube",
    "cilium", "vxlan", "weave", "tun", "tap", "wg",
];

/// The host's name: the kernel's hostname, lower-cased.
pub fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    sigma_types::validate::hostname(raw.trim()).ok()
}

/// Whether an address is reachable only inside a private network.
pub fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                // 100.64.0.0/10, carrier-grade NAT.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // fc00::/7 unique local, fe80::/10 link local.
            (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Labels an address `public` or `private`.
pub fn label(ip: &IpAddr) -> &'static str {
    if is_private(ip) { "private" } else { "public" }
}

fn keep_interface(name: &str) -> bool {
    name != "lo" && !SKIPPED_INTERFACES.iter().any(|p| name.starts_with(p))
}

/// The host's addresses, IPv4 and IPv6, labelled; loopback, link-local IPv6 and container
/// bridges left out. Public addresses come first.
pub fn addresses() -> Vec<IpAddress> {
    let mut out: Vec<IpAddress> = Vec::new();
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return out;
    };
    for iface in ifaces {
        let ip = iface.ip();
        if iface.is_loopback() || !keep_interface(&iface.name) || ip.is_unspecified() {
            continue;
        }
        if let IpAddr::V6(v6) = ip
            && (v6.segments()[0] & 0xffc0) == 0xfe80
        {
            continue;
        }
        let text = ip.to_string();
        if out.iter().any(|a| a.ip == text) {
            continue;
        }
        out.push(IpAddress {
            ip: text,
            label: label(&ip).to_string(),
        });
    }
    out.sort_by_key(|a| a.label != "public");
    out
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn os_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let line = text.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_string())
}

fn disk(path: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let total = st.f_blocks as u64 * frsize;
    let free = st.f_bfree as u64 * frsize;
    Some((total, total.saturating_sub(free)))
}

/// What the agent reports about the host.
pub fn system_info() -> SystemInfo {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| s as u64);
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        let v: Vec<f64> = s
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 3).then(|| [v[0], v[1], v[2]])
    });
    let (disk_total, disk_used) = disk("/").unzip();
    SystemInfo {
        cpu_cores: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u32),
        memory_total_bytes: meminfo_kib(&mem, "MemTotal:").map(|k| k * 1024),
        memory_available_bytes: meminfo_kib(&mem, "MemAvailable:").map(|k| k * 1024),
        disk_total_bytes: disk_total,
        disk_used_bytes: disk_used,
        uptime_seconds: uptime,
        load_average: load,
        os: os_release(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        extra: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_public_addresses() {
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(&p.parse().unwrap()), "{p}");
        }
        for p in [
            "203.0.113.1",
            "8.8.8.8",
            "100.128.0.1",
            "2001:db8::1",
            "2a01:4f8::1",
        ] {
            assert!(!is_private(&p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn container_bridges_are_skipped() {
        assert!(!keep_interface("docker0"));
        assert!(!keep_interface("veth12ab"));
        assert!(!keep_interface("lo"));
        assert!(keep_interface("eth0"));
        assert!(keep_interface("ens3"));
    }

    #[test]
    fn system_info_reads_the_host() {
        let s = system_info();
        assert!(s.cpu_cores.unwrap() >= 1);
        assert!(s.memory_total_bytes.unwrap() > 0);
        assert!(s.disk_total_bytes.unwrap() >= s.disk_used_bytes.unwrap());
        assert!(s.uptime_seconds.is_some());
        assert!(s.load_average.is_some());
    }
}
