//! Fleet bookkeeping (issue 20) against the real sigma-api binary, on SQLite and PostgreSQL:
//! contract fields, renewals, exchange rates and cost summary, export and import.

use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi, TestDb, VpsBuilder, both_backends};

both_backends!(
    contract_fields_round_trip_filter_and_are_checked,
    expiry_series_for_prometheus,
    exchange_rates_and_cost_summary,
    export_and_import,
    enrollment_tokens_preset_contracts,
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
    let s = SigmaApi::builder().store(&db).start();
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
    let s = SigmaApi::builder().store(&db).start();
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
    let (st, _) = s
        .request("GET", "/api/prometheus/contracts", None, None)
        .await;
    assert_eq!(st, 401, "credentials required");
}

async fn exchange_rates_and_cost_summary(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    s.post("/api/providers", k, json!({"name": "Hetzner"}))
        .await;
    s.post("/api/providers", k, json!({"name": "OVH"})).await;
    for (h, provider, contract) in [
        (
            "y1",
            "Hetzner",
            json!({"cost": "10", "currency": "EUR", "billing_cycle": "yearly"}),
        ),
        (
            "y2",
            "Hetzner",
            json!({"cost": "10", "currency": "EUR", "billing_cycle": "yearly"}),
        ),
        (
            "y3",
            "Hetzner",
            json!({"cost": "10", "currency": "EUR", "billing_cycle": "yearly"}),
        ),
        (
            "u1",
            "OVH",
            json!({"cost": "4.99", "currency": "USD", "billing_cycle": "monthly"}),
        ),
        (
            "g1",
            "OVH",
            json!({"cost": "5", "currency": "GBP", "billing_cycle": "monthly"}),
        ),
        (
            "o1",
            "OVH",
            json!({"cost": "5", "currency": "EUR", "billing_cycle": "other"}),
        ),
        ("n1", "OVH", json!({})),
    ] {
        let (st, v) = s
            .post(
                "/api/vps",
                k,
                VpsBuilder::new(h)
                    .set("provider", json!(provider))
                    .set("contract", contract)
                    .build(),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    // A deleted VPS is not paid for.
    let (_, gone) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("gone")
                .set(
                    "contract",
                    json!({"cost": "99", "currency": "EUR", "billing_cycle": "monthly"}),
                )
                .build(),
        )
        .await;
    s.delete(&format!("/api/vps/{}", gone["id"].as_str().unwrap()), k)
        .await;

    // Rates: operators set them, readers read them, everything is checked and audited.
    let operator = s.key("operator").await;
    let reader = s.key("readonly").await;
    let (st, r) = s
        .request(
            "PUT",
            "/api/exchange-rates/usd/eur",
            Some(&operator),
            Some(json!({"rate": "0.9"})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["from"], "USD");
    assert_eq!(r["rate"], "0.9");
    let (st, _) = s
        .request(
            "PUT",
            "/api/exchange-rates/USD/EUR",
            Some(&reader),
            Some(json!({"rate": "1"})),
        )
        .await;
    assert_eq!(st, 403, "readers do not set rates");
    for (path, body, f) in [
        ("/api/exchange-rates/USD/EUR", json!({"rate": 0.9}), "rate"),
        ("/api/exchange-rates/USD/EUR", json!({"rate": "0"}), "rate"),
        (
            "/api/exchange-rates/USD/EUR",
            json!({"rate": "0.123456789"}),
            "rate",
        ),
        (
            "/api/exchange-rates/USD/EUR",
            json!({"rate": "1", "why": "x"}),
            "why",
        ),
        (
            "/api/exchange-rates/DOLLAR/EUR",
            json!({"rate": "1"}),
            "from",
        ),
        ("/api/exchange-rates/EUR/eur", json!({"rate": "1"}), "to"),
    ] {
        let (st, v) = s.request("PUT", path, Some(k), Some(body.clone())).await;
        assert_eq!(st, 422, "{path} {body}: {v}");
        field(&v, f);
    }
    let (st, list) = s.get("/api/exchange-rates", &reader).await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    s.request(
        "PUT",
        "/api/exchange-rates/CHF/EUR",
        Some(k),
        Some(json!({"rate": "1.05"})),
    )
    .await;
    let (st, _) = s.delete("/api/exchange-rates/CHF/EUR", k).await;
    assert_eq!(st, 204);
    let (st, _) = s.delete("/api/exchange-rates/CHF/EUR", k).await;
    assert_eq!(st, 404);
    let (_, audit) = s.get("/api/audit?resource_type=exchange_rate", k).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "exchange_rate.set")
            .count(),
        2,
        "{audit}"
    );
    assert!(actions.contains(&"exchange_rate.delete"), "{audit}");

    // The summary in EUR by provider: 3 × 10/12 = 2.5 exactly; 4.99 × 0.9 = 4.491;
    // GBP has no rate and `other` cannot be normalised: listed, not guessed.
    let (st, sum) = s
        .get("/api/costs/summary?group_by=provider&currency=eur", &reader)
        .await;
    assert_eq!(st, 200, "{sum}");
    assert_eq!(sum["currency"], "EUR");
    assert_eq!(
        sum["groups"],
        json!([
            {"key": "Hetzner", "vps_count": 3, "monthly": "2.5"},
            {"key": "OVH", "vps_count": 1, "monthly": "4.491"}
        ])
    );
    assert_eq!(sum["monthly_total"], "6.991");
    assert_eq!(sum["vps_counted"], 4);
    assert_eq!(sum["vps_without_cost"], 1);
    let excluded: Vec<(String, String)> = sum["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["hostname"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        excluded,
        [
            ("g1".to_string(), "no_rate".to_string()),
            ("o1".to_string(), "other_billing_cycle".to_string())
        ]
    );
    let (_, by_cur) = s
        .get("/api/costs/summary?group_by=currency&currency=EUR", k)
        .await;
    assert_eq!(
        by_cur["groups"],
        json!([
            {"key": "EUR", "vps_count": 3, "monthly": "2.5"},
            {"key": "USD", "vps_count": 1, "monthly": "4.491"}
        ])
    );
    // In USD: no EUR→USD rate was entered, and the inverse of USD→EUR is not derived.
    let (_, usd) = s
        .get("/api/costs/summary?group_by=purpose&currency=USD", k)
        .await;
    assert_eq!(usd["monthly_total"], "4.99");
    assert_eq!(usd["excluded"].as_array().unwrap().len(), 5, "{usd}");
    for (q, f) in [
        ("group_by=colour&currency=EUR", "group_by"),
        ("group_by=provider&currency=EURO", "currency"),
        ("group_by=provider", "currency"),
    ] {
        let (st, v) = s.get(&format!("/api/costs/summary?{q}"), k).await;
        assert_eq!(st, 422, "{q}: {v}");
        assert!(v["fields"].to_string().contains(f), "{q}: {v}");
    }
}

async fn import(s: &SigmaApi, key: &str, query: &str, ctype: &str, body: &str) -> (u16, Value) {
    s.raw(
        "POST",
        &format!("/api/vps/import{query}"),
        key,
        ctype,
        body.as_bytes().to_vec(),
    )
    .await
}

fn outcomes(report: &Value) -> Vec<String> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect()
}

async fn export_and_import(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    s.post("/api/providers", k, json!({"name": "Hetzner"}))
        .await;
    let (st, a) = s
        .post(
            "/api/vps",
            k,
            VpsBuilder::new("a1")
                .public_ip("203.0.113.7")
                .set("provider", json!("hetzner"))
                .set("alias", json!("=HYPERLINK(\"http://x\")"))
                .set("tags", json!(["-x", "edge"]))
                .set(
                    "contract",
                    json!({"cost": "4.99", "currency": "EUR", "billing_cycle": "monthly",
                                         "expires_on": "2027-01-15", "ssh_port": 2222}),
                )
                .build(),
        )
        .await;
    assert_eq!(st, 201, "{a}");
    s.post("/api/vps", k, VpsBuilder::new("b1").build()).await;

    // CSV export: header, one line per VPS, formula-like cells neutralised.
    let reader = s.key("readonly").await;
    let resp = reqwest::Client::new()
        .get(s.url("/api/vps/export?format=csv"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("hostname,alias,provider,purpose,status"),
        "{csv}"
    );
    assert!(lines[1].starts_with("a1,"), "{csv}");
    assert!(lines[1].contains("'=HYPERLINK"), "neutralised: {csv}");
    assert!(lines[1].contains("'-x;edge"), "neutralised: {csv}");
    assert!(lines[1].contains("public=203.0.113.7"), "{csv}");
    assert!(lines[1].contains(",4.99,EUR,monthly,"), "{csv}");
    // Filters apply; JSON is an array of records.
    let (st, j) = s
        .get("/api/vps/export?format=json&currency=EUR", &reader)
        .await;
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["items"].as_array().unwrap().len(), 1);
    assert_eq!(j["items"][0]["contract"]["cost"], "4.99");
    let (st, v) = s.get("/api/vps/export?format=xlsx", &reader).await;
    assert_eq!(st, 422, "{v}");
    field(&v, "format");

    // The export re-imports unchanged: idempotent by hostname.
    let (st, r) = import(&s, k, "", "text/csv", &csv).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(outcomes(&r), ["unchanged", "unchanged"], "{r}");
    let (st, r) = import(&s, k, "", "application/json", &j.to_string()).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(outcomes(&r), ["unchanged"]);

    // A sheet with a change, a new VPS and a bad row: mode=all refuses all of it (422, report).
    let sheet = "hostname,purpose,provider,cost,currency,billing_cycle,expires_on,ssh_port,tags\n\
                 a1,xrayr,Hetzner,5.49,EUR,monthly,2027-01-15,2222,edge\n\
                 c1,xrayr,,10,USD,yearly,,,\n\
                 d1,xrayr,Nope,1,EURO,,2026-02-30,,\n";
    let (st, r) = import(&s, k, "?dry_run=true", "text/csv", sheet).await;
    assert_eq!(st, 422, "{r}");
    assert_eq!(
        outcomes(&r["report"]),
        ["updated", "created", "error"],
        "{r}"
    );
    field(&r, "rows[3].contract.currency");
    field(&r, "rows[3].contract.expires_on");
    let (st, r) = import(&s, k, "", "text/csv", sheet).await;
    assert_eq!(st, 422, "{r}");
    assert_eq!(r["report"]["applied"], false);
    let (_, v) = s.get("/api/vps?hostname=c1", k).await;
    assert_eq!(v["total"], 0, "nothing written");
    let (_, v) = s.get("/api/vps?hostname=a1", k).await;
    assert_eq!(v["items"][0]["contract"]["cost"], "4.99", "nothing written");

    // A dry run in partial mode reports, writes nothing.
    let (st, r) = import(&s, k, "?mode=partial&dry_run=true", "text/csv", sheet).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["applied"], false);
    let (_, v) = s.get("/api/vps?hostname=c1", k).await;
    assert_eq!(v["total"], 0, "a dry run writes nothing");

    // mode=partial writes the good rows; the bad one is reported with its fields, including
    // the provider only the database can check.
    let sheet2 = sheet.replace(
        "d1,xrayr,Nope,1,EURO,,2026-02-30,,",
        "d1,xrayr,Nope,1,EUR,monthly,,,",
    );
    let (st, r) = import(&s, k, "?mode=partial", "text/csv", &sheet2).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(outcomes(&r), ["updated", "created", "error"], "{r}");
    assert!(r["rows"][2]["fields"]["provider"].is_string(), "{r}");
    let (_, v) = s.get("/api/vps?hostname=a1", k).await;
    assert_eq!(v["items"][0]["contract"]["cost"], "5.49");
    assert_eq!(v["items"][0]["tags"], json!(["edge"]));
    assert_eq!(
        v["items"][0]["ip_addresses"],
        json!([]),
        "an empty cell clears"
    );
    let (_, v) = s.get("/api/vps?hostname=c1", k).await;
    assert_eq!(v["items"][0]["contract"]["billing_cycle"], "yearly");
    // Again: idempotent.
    let (_, r) = import(&s, k, "?mode=partial", "text/csv", &sheet2).await;
    assert_eq!(outcomes(&r), ["unchanged", "unchanged", "error"], "{r}");

    // Audited: each applied import (the two re-imports and the two partial ones; refused and
    // dry runs write nothing), and each create/update as usual.
    let (_, audit) = s.get("/api/audit?action=vps.import", k).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 4, "{audit}");
    let (_, audit) = s.get("/api/audit?action=vps.update", k).await;
    assert_eq!(audit["total"], 1, "a1 changed once: {audit}");

    // Bad input is named; the import has its own size bound (413), above the general one.
    let (st, v) = import(&s, k, "", "text/csv", "hostname,colour\nx,y\n").await;
    assert_eq!(st, 422, "{v}");
    field(&v, "columns.colour");
    field(&v, "columns.purpose");
    let (st, _) = import(&s, k, "", "text/plain", "x").await;
    assert_eq!(st, 415);
    let (st, _) = import(&s, &reader, "", "text/csv", &csv).await;
    assert_eq!(st, 403, "readers do not import");
    let (st, v) = import(&s, k, "?mode=some", "text/csv", &csv).await;
    assert_eq!(st, 422, "{v}");
    // Bounded by the server's body limit (256 KiB by default), with a clear 413.
    let mut big = String::from("hostname,purpose\n");
    for i in 0..1500 {
        big.push_str(&format!("bulk-{i}.example.net,xrayr\n"));
    }
    let (st, r) = import(&s, k, "?dry_run=true", "text/csv", &big).await;
    assert_eq!(st, 200, "1500 rows are fine: {}", r["message"]);
    assert_eq!(r["created"], 1500);
    let huge = "x".repeat(256 * 1024 + 1);
    let (st, v) = import(&s, k, "", "text/csv", &huge).await;
    assert_eq!(st, 413, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("SIGMA_MAX_BODY_BYTES"),
        "{v}"
    );
    let mut many = String::from("hostname,purpose\n");
    for i in 0..5001 {
        many.push_str(&format!("m{i},x\n"));
    }
    assert!(many.len() < 256 * 1024);
    let (st, v) = import(&s, k, "", "text/csv", &many).await;
    assert_eq!(st, 413, "{v}");
    assert!(v["message"].as_str().unwrap().contains("5000 rows"), "{v}");
}

async fn enrollment_tokens_preset_contracts(db: TestDb) {
    let s = SigmaApi::builder().store(&db).start();
    let k = ADMIN_KEY;
    let token = s
        .token(json!({"purpose": "xrayr", "max_uses": 5,
                      "contract": {"cost": "3.50", "currency": "usd", "billing_cycle": "monthly",
                                   "cpu_cores": 1, "ram_mb": 1024, "data_center": "NYC1"}}))
        .await;
    let (st, v) = s
        .post(
            "/api/agent/register",
            &token,
            json!({"hostname": "batch-1.example.net",
                   "ip_addresses": [{"ip": "203.0.113.50", "label": "public"}]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, list) = s.get("/api/vps?hostname=batch-1.example.net", k).await;
    let c = &list["items"][0]["contract"];
    assert_eq!(c["cost"], "3.5");
    assert_eq!(c["currency"], "USD");
    assert_eq!(c["data_center"], "NYC1");
    let (_, tokens) = s.get("/api/enrollment-tokens", k).await;
    assert_eq!(
        tokens["items"][0]["presets"]["contract"]["ram_mb"], 1024,
        "{tokens}"
    );
    for (body, f) in [
        (
            json!({"purpose": "xrayr", "contract": {"cost": "1"}}),
            "contract.currency",
        ),
        (
            json!({"purpose": "xrayr", "contract": {"ssh_port": "x"}}),
            "contract.ssh_port",
        ),
        (
            json!({"vps_id": list["items"][0]["id"], "contract": {"cpu_cores": 1}}),
            "contract",
        ),
    ] {
        let (st, v) = s.post("/api/enrollment-tokens", k, body.clone()).await;
        assert_eq!(st, 422, "{body}: {v}");
        field(&v, f);
    }
}
