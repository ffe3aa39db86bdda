//! A simulated VPS host: a network namespace joined to the host by a veth pair, with its own
//! `/etc/hosts` (`ip netns exec` bind-mounts `/etc/netns/<name>/hosts` over it).

use std::path::PathBuf;
use std::process::Command;

/// Runs `ip` with these arguments, panicking with its stderr on failure (harness set-up errors
/// are test failures).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One namespace. The host side of its link is `10.<net>.<index>.1/24`, the namespace side
/// `10.<net>.<index>.2/24` (`net` 77 for VPS, [`CLUSTER_NET`] for the cluster's side), the
/// namespace's default route points at the host side. Everything is removed on drop.
pub struct Netns {
    /// Namespace name (`sigma-e2e-<pid>-<index>`, so parallel runs do not collide).
    pub name: String,
    /// The host's address on the link (what processes in the namespace use to reach the host).
    pub host_ip: String,
    /// The namespace's address (the simulated VPS's address).
    pub ip: String,
    /// The host side of the veth pair.
    pub host_if: String,
    /// The namespace side of the veth pair.
    pub ns_if: String,
    etc_dir: PathBuf,
}

/// The second octet of the cluster side's addresses (gateway, Xboard, istiod's address):
/// `10.78.0.0/16`, apart from the VPS' `10.77.0.0/16`.
pub const CLUSTER_NET: u8 = 78;

impl Netns {
    /// Creates VPS namespace number `index` (1..=250): `10.77.<index>.0/24`.
    pub fn create(index: u8) -> Netns {
        Netns::create_in(77, index)
    }

    /// Creates namespace number `index` (1..=250) on `10.<net>.<index>.0/24`.
    pub fn create_in(net: u8, index: u8) -> Netns {
        assert!((1..=250).contains(&index), "namespace index {index}");
        let pid = std::process::id() % 10_000;
        let tag = if net == 77 { "e" } else { "c" };
        let name = if net == 77 {
            format!("sigma-e2e-{pid}-{index}")
        } else {
            format!("sigma-e2e-{pid}-{net}-{index}")
        };
        // Interface names are limited to 15 bytes.
        let host_if = format!("s{tag}{pid}h{index}");
        let ns_if = format!("s{tag}{pid}n{index}");
        let host_ip = format!("10.{net}.{index}.1");
        let ip_ = format!("10.{net}.{index}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        exec(&["link", "set", "lo", "up"]);
        exec(&["addr", "add", &format!("{ip_}/24"), "dev", &ns_if]);
        exec(&["link", "set", &ns_if, "up"]);
        exec(&["route", "add", "default", "via", &host_ip]);
        let etc_dir = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc_dir).expect("create /etc/netns/<name>");
        std::fs::write(
            etc_dir.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{ip_} {name}\n"),
        )
        .expect("write the namespace's hosts file");
        Netns {
            name,
            host_ip,
            ip: ip_,
            host_if,
            ns_if,
            etc_dir,
        }
    }

    /// Lets the host forward packets arriving from this namespace (IPv4 forwarding is decided
    /// per incoming interface, so only this link routes; the host's other interfaces and
    /// `net.ipv4.ip_forward` stay as they are). Goes with the link.
    pub fn forward_from(&self) {
        let f = format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.host_if);
        std::fs::write(&f, "1").unwrap_or_else(|e| panic!("write {f}: {e}"));
    }

    /// Replaces the default route with routes to `destinations` only (each a prefix such as
    /// `10.78.1.2/32`, through the host side of the link): the namespace reaches the host's own
    /// address on the link and these, nothing else. Forwarding on the link is turned on.
    pub fn route_only_to(&self, destinations: &[&str]) {
        ip(&["netns", "exec", &self.name, "ip", "route", "del", "default"]);
        for d in destinations {
            ip(&[
                "netns",
                "exec",
                &self.name,
                "ip",
                "route",
                "add",
                d,
                "via",
                &self.host_ip,
            ]);
        }
        self.forward_from();
    }

    /// A route sending `cidr` onto the link itself (no gateway: nothing answers for those
    /// addresses). The kernel needs some route before an outbound connection reaches the
    /// packet filter, so this is what lets iptables interception redirect a range that the
    /// namespace cannot otherwise reach.
    pub fn route_on_link(&self, cidr: &str) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            "add",
            cidr,
            "dev",
            &self.ns_if,
        ]);
    }

    /// The namespace's own `/etc/hosts` as seen from the host.
    pub fn hosts_file(&self) -> PathBuf {
        self.etc_dir.join("hosts")
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The processes whose network namespace is this one, each with the binary it runs
    /// (`/proc/<pid>/exe`, symlinks resolved). A process is matched by the identity of its
    /// namespace (device and inode of `/proc/<pid>/ns/net` against `/run/netns/<name>`, as
    /// `ip netns pids` does), never by its name: pilot-agent starts Envoy through a symlink,
    /// so names say little. Processes that end while the table is read are left out.
    pub fn processes(&self) -> Vec<(u32, PathBuf)> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.name));
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc") {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(net) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            if (net.dev(), net.ino()) != (ns.dev(), ns.ino()) {
                continue;
            }
            if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                found.push((pid, exe));
            }
        }
        found
    }

    /// Packet-filter rules in the namespace, from every place one can live: iptables and
    /// ip6tables through both back ends (`-nft` and `-legacy`; pilot-agent picks one) and
    /// nftables itself (`nft -j list ruleset`, which also shows rules made with `nft`
    /// directly). Every command must succeed: a failed read fails the test instead of reading
    /// as "no rule".
    pub fn filter_rules(&self) -> Vec<String> {
        let mut rules = Vec::new();
        for prog in [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            for l in self.output(prog, &[]).lines() {
                if l.starts_with("-A ") {
                    rules.push(format!("{prog}: {l}"));
                }
            }
        }
        let json = self.output("nft", &["-j", "list", "ruleset"]);
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("nft -j: {e}: {json}"));
        for item in v["nftables"].as_array().expect("nft -j: an nftables array") {
            if let Some(rule) = item.get("rule") {
                rules.push(format!("nft: {rule}"));
            }
        }
        rules
    }

    /// Runs a command inside the namespace and returns its stdout (panics on failure).
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair and with it the host end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc_dir);
    }
}
