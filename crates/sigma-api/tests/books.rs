//! Fleet bookkeeping (issue 20) against the real sigma-api binary, on SQLite and PostgreSQL:
//! contract fields, renewals, exchange rates and cost summary, export and import.

mod common;

use common::{ADMIN_KEY, Server, TestDb, VpsBuilder};
use serde_json::{Value, json};

both_backends!(
    contract_fields_round_trip_filter_and_are_checked,
    expiry_series_for_prometheus,
);

fn field<'a>(v: &'a Value, f: &str) -> &'a str {
    v["fields"][f]
        .as_str()
        .unwrap_or_else(|| panic!("no field {f} in {v}"))
}

/// A date `days` from today, as the API writes dates.
fn day(days: i64) -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(days);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

async fn contract_fields_round_trip_filter_and_are_checked(db: TestDb) {
    let s = Server::start(&db);
    let k = ADMIN_KEY;
    let contract = json!({
        "cost": "4.99", "currency": "eur", "billing_cycle": "monthly",
        "purchased_on": "2026-01-15", "expires_on": day(5), "auto_renew": false,
        "cpu_cores": 2, "ram_mb": 4096, "disk_gb": 40, "traffic_gb": 20000,
        "ssh_port": 2222, "data_center": "FSN1-DC14"
    });
    let (st, a) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("a1")
                .set("contract", contract.clone())
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["contract"]["cost"], "4.99");
    assert_eq!(a["contract"]["currency"], "EUR", "canonical upper case");
    assert_eq!(a["contract"]["expires_on"], day(5));
    assert_eq!(a["contract"]["ssh_port"], 2222);
    let id = a["id"].as_str().unwrap().to_string();
    let (_, got) = s.get(&format!("/api/vps/{id}"), k).await;
    assert_eq!(got["contract"], a["contract"], "stored as given");

    // A VPS without contract terms, and one priced in USD, yearly.
    let (st, b) = s.post("/api/vps", k, VpsBuilder::new("b1").build()).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["contract"]["cost"], Value::Null);
    assert_eq!(b["contract"]["auto_renew"], false);
    let (st, c) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("c1")
                .set(
                    "contract",
                    json!({"cost": "120", "currency": "USD", "billing_cycle": "yearly", "expires_on": day(200)}),
                )
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{c}");

    // Every bad contract field is named, in one 422; nothing is stored.
    let (st, v) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("bad1")
                .set(
                    "contract",
                    json!({"cost": "4.999999", "currency": "EURO", "billing_cycle": "weekly",
                           "ssh_port": 0}),
                )
                .build(),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    // Decoding stops at the first wrongly typed field; the rest are checked once it decodes.
    let named: Vec<&String> = v["fields"].as_object().unwrap().keys().collect();
    assert!(
        !named.is_empty() && named.iter().all(|f| f.starts_with("contract.")),
        "{v}"
    );
    let (st, v) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("bad1")
                .set("hostname", json!("-bad"))
                .set(
                    "contract",
                    json!({"cost": "4.99", "currency": "EURO", "ssh_port": 0, "cpu_cores": 0,
                           "purchased_on": "2026-02-01", "expires_on": "2026-01-01"}),
                )
                .build(),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    for f in [
        "hostname",
        "contract.currency",
        "contract.ssh_port",
        "contract.cpu_cores",
        "contract.expires_on",
    ] {
        field(&v, f);
    }
    for (body, f) in [
        (json!({"cost": 4.99, "currency": "EUR"}), "contract.cost"),
        (json!({"cost": "5"}), "contract.currency"),
        (json!({"billing_cycle": "weekly"}), "contract.billing_cycle"),
        (json!({"expires_on": "2026-02-30"}), "contract.expires_on"),
        (json!({"colour": "red"}), "contract.colour"),
        (json!("cheap"), "contract"),
    ] {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new("bad2")
                    .set("contract", body.clone())
                    .build(),
            )
            .await;
        assert_eq!(st, 422, "{body} → {v}");
        assert!(
            v["fields"].as_object().unwrap().keys().any(|k| k == f),
            "{body}: {f} not named in {v}"
        );
    }
    let (_, none) = s.get("/api/vps?hostname=bad2", k).await;
    assert_eq!(none["total"], 0);

    // PATCH: absent stays, null clears, the whole is checked again.
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"contract": {"auto_renew": true, "data_center": null, "cost": "5.10"}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["contract"]["auto_renew"], true);
    assert_eq!(v["contract"]["data_center"], Value::Null);
    assert_eq!(v["contract"]["cost"], "5.1");
    assert_eq!(v["contract"]["currency"], "EUR", "absent stays");
    assert_eq!(v["contract"]["ssh_port"], 2222);
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"contract": {"currency": null}}),
        )
        .await;
    assert_eq!(st, 422, "a cost without a currency: {v}");
    field(&v, "contract.currency");
    let (st, v) = s
        .patch(
            &format!("/api/vps/{id}"),
            k,
            json!({"contract": {"ssh_port": "22"}}),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    field(&v, "contract.ssh_port");
    let (_, v) = s.get(&format!("/api/vps/{id}"), k).await;
    assert_eq!(
        v["contract"]["currency"], "EUR",
        "a refused patch changes nothing"
    );

    // Filters.
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["hostname"].as_str().unwrap().to_string())
            .collect()
    };
    let (st, v) = s.get("/api/vps?expires_within_days=7", k).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(names(&v), ["a1"]);
    let (_, v) = s.get("/api/vps?expires_within_days=365", k).await;
    assert_eq!(names(&v), ["a1", "c1"]);
    let (_, v) = s.get("/api/vps?currency=usd", k).await;
    assert_eq!(names(&v), ["c1"]);
    let (_, v) = s.get("/api/vps?cost_min=5.1&cost_max=100", k).await;
    assert_eq!(names(&v), ["a1"], "5.1 ≤ cost ≤ 100, compared exactly");
    let (_, v) = s.get("/api/vps?cost_min=5.11", k).await;
    assert_eq!(names(&v), ["c1"]);
    for (q, f) in [
        ("expires_within_days=-1", "expires_within_days"),
        ("currency=XYZ", "currency"),
        ("cost_min=1e3", "cost_min"),
        ("cost_min=5&cost_max=4", "cost_max"),
    ] {
        let (st, v) = s.get(&format!("/api/vps?{q}"), k).await;
        assert_eq!(st, 422, "{q}: {v}");
        field(&v, f);
    }

    // The audit log carries the contract in before/after.
    let (_, audit) = s
        .get(&format!("/api/audit?resource_id={id}&action=vps.update"), k)
        .await;
    assert!(audit.to_string().contains("\"auto_renew\":true"), "{audit}");

    // The OpenAPI document describes the contract and the filters.
    let (_, doc) = s.get("/api/openapi.json", k).await;
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["VpsContract"]["properties"]["cost"].is_object(),
        "{}",
        schemas["VpsContract"]
    );
    let params = doc["paths"]["/api/vps"]["get"]["parameters"].to_string();
    for p in ["expires_within_days", "currency", "cost_min", "cost_max"] {
        assert!(params.contains(p), "{p} not documented");
    }
}

async fn expiry_series_for_prometheus(db: TestDb) {
    let s = Server::start(&db);
    let k = ADMIN_KEY;
    for (h, c) in [
        (
            "dated",
            json!({"expires_on": "2027-01-15", "auto_renew": true}),
        ),
        ("undated", json!({"cost": "1", "currency": "EUR"})),
    ] {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new(h)
                    .set("status", json!("active"))
                    .set("contract", c)
                    .build(),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let reader = s.key("readonly").await;
    let resp = reqwest::Client::new()
        .get(s.url("/api/prometheus/contracts"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    let text = resp.text().await.unwrap();
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(series.len(), 1, "only the dated VPS: {text}");
    // The end of 2027-01-15, UTC.
    assert!(series[0].ends_with("} 1800057600"), "{text}");
    for l in [
        r#"hostname="dated""#,
        r#"status="active""#,
        r#"auto_renew="true""#,
        "vps_id=\"",
    ] {
        assert!(series[0].contains(l), "{l} missing: {text}");
    }
    let (st, _) = s.call("GET", "/api/prometheus/contracts", None, None).await;
    assert_eq!(st, 401, "credentials required");
}
