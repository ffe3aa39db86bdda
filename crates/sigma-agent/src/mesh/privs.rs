//! Whom pilot-agent runs as: the `istio-proxy` user (read from `/etc/passwd` and `/etc/group`,
//! no NSS) when it exists and the agent is root, with `CAP_NET_BIND_SERVICE` as an ambient
//! capability when an egress listener needs a port below 1024.
//!
//! The switch happens in the forked child right before `exec`, with plain system calls:
//! `setgroups`, `setgid`, `setuid` (keeping capabilities across it), `capset` and
//! `PR_CAP_AMBIENT_RAISE`. An ambient capability survives `exec` of an ordinary binary and is
//! inherited by its children, so pilot-agent's Envoy gets it too. This needs no helper program
//! (`setpriv`, `su`, `sudo` differ between distributions or are missing) and no file
//! capabilities on binaries the agent may have downloaded itself.

use std::io;

/// A user from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Finds `name` in the text of an `/etc/passwd` file.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// The groups of `user` from the text of an `/etc/group` file, its primary group first.
pub fn groups_of(group: &str, user: &User) -> Vec<u32> {
    let mut out = vec![user.gid];
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m.trim() == user.name) && !out.contains(&gid) {
            out.push(gid);
        }
    }
    out
}

/// Looks `name` up in the system's `/etc/passwd` and `/etc/group`.
pub fn lookup(name: &str) -> Option<(User, Vec<u32>)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let user = find_user(&passwd, name)?;
    let groups = std::fs::read_to_string("/etc/group")
        .map(|g| groups_of(&g, &user))
        .unwrap_or_else(|_| vec![user.gid]);
    Some((user, groups))
}

/// Whether the agent runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The credentials a child process switches to before `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

const CAP_NET_BIND_SERVICE: u32 = 10;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Switches the calling (freshly forked) process to `c`, keeping `CAP_NET_BIND_SERVICE`
/// (ambient, the only capability) so that Envoy can bind ports below 1024.
///
/// Always, not only when the bundle's egress listeners need it: a relay's route listeners
/// (`listen_port` 443, say) reach Envoy from istiod at any time, without a bundle change or a
/// proxy restart, so a grant decided at start would leave a route added later unbound. The
/// capability lets Envoy bind low ports and nothing else; which listeners it binds is what
/// istiod sends, from the Sidecars sigma writes (Istio's own gateways get the same through
/// `net.ipv4.ip_unprivileged_port_start=0`).
///
/// # Safety
/// Only for `pre_exec`: it changes the credentials of the whole process and must run in the
/// child between `fork` and `exec`. It calls async-signal-safe system calls only and does not
/// allocate.
pub unsafe fn switch_to(c: &Credentials) -> io::Result<()> {
    // SAFETY (all blocks below): plain system calls with valid pointers to live, correctly laid
    // out memory; the caller guarantees we are the forked child.
    unsafe {
        // Without KEEPCAPS, setuid away from root empties the permitted set.
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        check(libc::setgroups(c.groups.len() as _, c.groups.as_ptr()))?;
        check(libc::setgid(c.gid))?;
        check(libc::setuid(c.uid))?;
        let mut hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let bit = 1u32 << CAP_NET_BIND_SERVICE;
        // An ambient capability must be both permitted and inheritable.
        let data = [
            CapData {
                effective: bit,
                permitted: bit,
                inheritable: bit,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        let r = libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr());
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            CAP_NET_BIND_SERVICE as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ))?;
    }
    Ok(())
}

/// Asks the kernel to send SIGTERM to the calling (forked) process when the agent dies, so a
/// killed agent never leaves an unsupervised pilot-agent holding Envoy's ports; fails if the
/// agent (`parent`) is already gone.
///
/// # Safety
/// Only for `pre_exec`, after any credential change (which clears the setting).
pub unsafe fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid with plain integer arguments.
    unsafe {
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() != parent {
            return Err(io::Error::other(
                "the agent exited while starting pilot-agent",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:1337:1337::/var/lib/istio:/bin/sh\nbroken:x:zz:1::/:/bin/sh\n";
        let u = find_user(passwd, "istio-proxy").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (1337, 1337, "/var/lib/istio")
        );
        assert!(find_user(passwd, "istio").is_none());
        assert!(find_user(passwd, "broken").is_none());
        let group = "istio-proxy:x:1337:\nssl-cert:x:110:postgres,istio-proxy\nother:x:5:a,b\n";
        assert_eq!(groups_of(group, &u), vec![1337, 110]);
    }
}
