//! Heartbeats are queued and written in batches; an operator's edit made while a heartbeat is
//! still queued must not be overwritten by it (a lost update). Real sigma-api binary, both
//! backends.

use serde_json::json;
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, both_backends};

both_backends!(address_edit_beats_an_older_queued_heartbeat);

async fn address_edit_beats_an_older_queued_heartbeat(db: TestDb) {
    // A flush interval far longer than the test: only the final flush on SIGTERM writes, so
    // the agent's report is certainly still queued when the operator edits.
    let opts = || {
        SigmaApi::builder()
            .store(&db)
            .env("SIGMA_HEARTBEAT_FLUSH_INTERVAL", "1h")
    };
    let mut s = opts().start();
    let token = s.token(json!({"purpose": "xrayr"})).await;
    let host = "edited.example.com";
    let (st, r) = s
        .post("/api/agent/register", &token, json!({"hostname": host}))
        .await;
    assert_eq!(st, 200, "{r}");
    let key = r["agent_key"].as_str().unwrap().to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    let reported = json!([{"ip": "192.0.2.10", "label": "public"}]);
    let edited = json!([{"ip": "198.51.100.20", "label": "public"}]);
    let (st, _) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": host, "ip_addresses": reported, "system_info": {"uptime_seconds": 1}}),
        )
        .await;
    assert_eq!(st, 200);
    // Control: the queued report is what reads show before the edit.
    let (_, v) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(v["ip_addresses"], reported, "{v}");

    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            ADMIN_KEY,
            json!({"ip_addresses": edited}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ip_addresses"], edited, "the PATCH answer shows the edit");
    let (_, v) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(v["ip_addresses"], edited, "reads show the edit: {v}");
    // The rest of the queued heartbeat is kept.
    assert_eq!(v["system_info"]["uptime_seconds"], 1, "{v}");

    // A later heartbeat without addresses changes nothing about them.
    let (st, _) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": host, "system_info": {"uptime_seconds": 2}}),
        )
        .await;
    assert_eq!(st, 200);
    let status = s.stop();
    assert!(status.success(), "clean exit: {status}");
    let mut s = opts().start();
    let (_, v) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(
        v["ip_addresses"], edited,
        "stored after the final flush: {v}"
    );
    assert_eq!(v["system_info"]["uptime_seconds"], 2, "{v}");

    // The agent's next report of different addresses is newer than the edit and wins.
    let (st, _) = s
        .post(
            "/api/agent/heartbeat",
            &key,
            json!({"hostname": host, "ip_addresses": reported}),
        )
        .await;
    assert_eq!(st, 200);
    let status = s.stop();
    assert!(status.success(), "clean exit: {status}");
    let s = opts().start();
    let (_, v) = s.get(&format!("/api/vps/{id}"), ADMIN_KEY).await;
    assert_eq!(v["ip_addresses"], reported, "{v}");
}
