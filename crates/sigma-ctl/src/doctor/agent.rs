//! The links of the VPS's side: its agent's heartbeats and mode, the proxy, certificate and
//! token it reports, and istiod's health verdict on its WorkloadEntry.

use sigma_types::AgentMode;
use sigma_types::mesh::{MeshAgentState, MeshPhase};
use time::{Duration, OffsetDateTime};

use super::{
    CERT_WARN_BEFORE, Inputs, Link, LinkKind, MeshReport, TOKEN_WARN_BEFORE, failed, ok, output,
    until, warning,
};

fn heartbeat_stale(i: &Inputs<'_>) -> Option<String> {
    match i.vps.last_heartbeat_at {
        Some(t) if i.now - t > i.stale_after => Some(output::ago(t, i.now)),
        _ => None,
    }
}

pub(super) fn agent_heartbeat(i: &Inputs<'_>) -> Link {
    let k = LinkKind::AgentHeartbeat;
    let h = &i.vps.hostname;
    match i.vps.last_heartbeat_at {
        None => failed(
            k,
            "its agent has never heartbeated",
            format!(
                "install and start sigma-agent on {h} (`sigmactl enroll create` prints the install command)"
            ),
        ),
        Some(t) if i.now - t > i.stale_after => failed(
            k,
            format!(
                "last heartbeat {} ({}), older than {}s",
                output::time(t),
                output::ago(t, i.now),
                i.stale_after.whole_seconds()
            ),
            format!(
                "on {h}: `systemctl status sigma-agent` and `journalctl -u sigma-agent`; check that it reaches sigma-api and that its key is not revoked"
            ),
        ),
        Some(t) => ok(k, format!("last heartbeat {}", output::ago(t, i.now))),
    }
}

pub(super) fn agent_mesh_mode(i: &Inputs<'_>) -> Link {
    let k = LinkKind::AgentMeshMode;
    let h = &i.vps.hostname;
    let restart =
        format!("restart sigma-agent on {h} with --istio-enabled (AGENT_ISTIO_ENABLED=true)");
    match i.vps.agent_state.as_ref().and_then(|a| a.mode) {
        Some(AgentMode::Mesh) => ok(k, "mesh mode (pilot-agent runs Envoy under istiod)"),
        Some(AgentMode::Classic) => failed(
            k,
            "classic mode: the agent serves Envoy routes itself, no pilot-agent",
            restart,
        ),
        None if i.vps.agent_state.is_none() => failed(
            k,
            "its agent has reported no state",
            format!("run sigma-agent on {h} with --istio-enabled (AGENT_ISTIO_ENABLED=true)"),
        ),
        None => failed(
            k,
            "its agent reports no mode (an agent older than mesh mode)",
            format!("upgrade sigma-agent on {h}, then {restart}"),
        ),
    }
}

pub(super) fn mesh_state<'a>(i: &Inputs<'a>) -> Option<&'a MeshAgentState> {
    i.vps
        .agent_state
        .as_ref()
        .and_then(|a| a.mesh_state.as_ref())
}

pub(super) fn proxy(i: &Inputs<'_>) -> Link {
    let k = LinkKind::Proxy;
    let h = &i.vps.hostname;
    let Some(m) = mesh_state(i) else {
        return failed(
            k,
            "its agent reports no pilot-agent state",
            "see the agent links above: only an agent in mesh mode runs pilot-agent",
        );
    };
    let mut facts = Vec::new();
    if let Some(b) = &m.bundle_version {
        facts.push(format!("bundle {b}"));
    }
    facts.push(format!("{} restart(s) of pilot-agent", m.restarts));
    let mut detail = facts.join(", ");
    if let Some(age) = heartbeat_stale(i) {
        detail.push_str(&format!("; reported {age}, may be out of date"));
    }
    let reason = |what: &str| match &m.reason {
        Some(r) => format!("{what}: {r} ({detail})"),
        None => format!("{what} ({detail})"),
    };
    let logs = format!("on {h}: `journalctl -u sigma-agent` (pilot-agent's output is in it)");
    match m.state {
        MeshPhase::Ready => ok(k, reason("ready: Envoy answers /healthz/ready")),
        MeshPhase::Installing | MeshPhase::Starting => warning(
            k,
            reason(m.state.as_str()),
            format!("give it a minute; if it stays {}, {logs}", m.state.as_str()),
        ),
        MeshPhase::Degraded => failed(
            k,
            reason("degraded"),
            format!(
                "{logs}; check that it reaches istiod through the east-west gateway (port 15012) and that its istio-token is valid"
            ),
        ),
        MeshPhase::Stopped => failed(
            k,
            reason("stopped"),
            "the agent stops pilot-agent when the VPS retires or leaves the mesh; fix the links above, then restart sigma-agent",
        ),
    }
}

fn expiry(
    i: &Inputs<'_>,
    k: LinkKind,
    at: Option<OffsetDateTime>,
    warn_before: Duration,
    what: &str,
    fix_expired: String,
    fix_soon: String,
) -> Link {
    let Some(m) = mesh_state(i) else {
        return warning(
            k,
            format!("unknown: the agent reports no {what}"),
            "see the pilot-agent link",
        );
    };
    let Some(t) = at else {
        let why = if m.state == MeshPhase::Ready {
            format!("the agent does not report the {what}'s expiry (an older agent?)")
        } else {
            format!(
                "no {what} reported yet (pilot-agent is {})",
                m.state.as_str()
            )
        };
        return warning(k, why, "see the pilot-agent link");
    };
    if t <= i.now {
        failed(k, format!("expired {}", until(t, i.now)), fix_expired)
    } else if t - i.now < warn_before {
        warning(k, format!("expires soon: {}", until(t, i.now)), fix_soon)
    } else {
        ok(k, format!("valid until {}", until(t, i.now)))
    }
}

pub(super) fn certificate(i: &Inputs<'_>) -> Link {
    let h = &i.vps.hostname;
    expiry(
        i,
        LinkKind::Certificate,
        mesh_state(i).and_then(|m| m.cert_expires_at),
        CERT_WARN_BEFORE,
        "workload certificate",
        format!(
            "the agent reinstalls the bundle when it finds the certificate expired; if it stays expired, pilot-agent on {h} cannot reach istiod to renew it: check the east-west gateway (port 15012) and the istio-token link"
        ),
        format!(
            "pilot-agent renews it at half its life, so renewals are failing: on {h}, `journalctl -u sigma-agent` for pilot-agent's errors"
        ),
    )
}

pub(super) fn token(i: &Inputs<'_>) -> Link {
    let h = &i.vps.hostname;
    expiry(
        i,
        LinkKind::Token,
        mesh_state(i).and_then(|m| m.token_expires_at),
        TOKEN_WARN_BEFORE,
        "istio-token",
        format!(
            "the agent refreshes it from GET /api/agent/istio-bootstrap at 50-70 % of its life, so those fetches fail: see `journalctl -u sigma-agent` on {h}, and `sigmactl mesh bootstrap {h} -o DIR` shows the error sigma-api gives"
        ),
        format!(
            "refreshes are failing: see `journalctl -u sigma-agent` on {h}, and `sigmactl mesh bootstrap {h} -o DIR` shows the error sigma-api gives"
        ),
    )
}

pub(super) fn workload_health(i: &Inputs<'_>) -> Link {
    let k = LinkKind::WorkloadHealth;
    let r = match i.report {
        MeshReport::Unsupported => {
            return warning(
                k,
                "unknown: sigma-api too old to report istiod's health verdict",
                "upgrade sigma-api (GET /api/vps/{id}/mesh), or read the WorkloadEntry's Healthy condition with kubectl",
            );
        }
        MeshReport::Reported(r) => r,
    };
    if !r.meshed {
        return warning(
            k,
            "not checked: the VPS has no place in the mesh",
            "fix the links above first",
        );
    }
    match &r.health {
        Some(h) if h.healthy => ok(k, "istiod reports the WorkloadEntry Healthy"),
        Some(h) => {
            let mut why = String::from("istiod reports the WorkloadEntry not healthy");
            for part in [&h.reason, &h.message].into_iter().flatten() {
                why.push_str(&format!(": {part}"));
            }
            if let Some(t) = &h.last_transition_time {
                why.push_str(&format!(" (since {t})"));
            }
            failed(
                k,
                why,
                format!(
                    "the WorkloadGroup's readiness probe fails on the VPS: check that purpose {}'s service runs and answers the probe's port and path (see `sigmactl mesh export`), and the pilot-agent link",
                    i.vps.purpose
                ),
            )
        }
        None if r.actual.is_some() => warning(
            k,
            "istiod has given no health verdict yet",
            "istiod sets the Healthy condition once pilot-agent is connected and the WorkloadGroup's probe has run; see the pilot-agent link",
        ),
        None => warning(
            k,
            "unknown: sigma-api cannot see a WorkloadEntry in the cluster",
            "see the WorkloadEntry link",
        ),
    }
}
