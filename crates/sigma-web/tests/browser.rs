//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`), driven
//! over WebDriver by fantoccini against the real sigma-api binary on SQLite.
//!
//! fantoccini is used because it is a plain async WebDriver client on hyper (already in the
//! tree), maintained, and needs no TLS stack for a driver on loopback; it runs with its
//! default features off.
//!
//! Without chromium the test is skipped with a notice, unless `SIGMA_TEST_REQUIRE_BROWSER=1`
//! (set by scripts/test), which makes a missing browser a failure. Screenshots of the main
//! pages are saved under the test's temporary directory; the path is printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sigma_testkit::{ADMIN_KEY, SigmaApi};

const HOSTILE_IMG: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_SCRIPT: &str = "<script>alert(2)</script>";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// chromedriver, killed when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver(chromedriver: &Path) -> (Driver, String) {
    let port = sigma_testkit::free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Driver(child), format!("http://127.0.0.1:{port}"))
}

async fn browser(webdriver: &str, chromium: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--disable-extensions"],
        },
        // An alert raised by injected script must stay open so the test can see it.
        "unhandledPromptBehavior": "ignore",
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("WebDriver session")
}

async fn text_of(c: &Client, css: &str) -> String {
    wait_text(c, css, |_| true).await
}

/// Waits (up to 10 s) until the element `css` exists and its text satisfies `want`: a form
/// submission returns before the next page has loaded.
async fn wait_text(c: &Client, css: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("(no such element)");
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if want(&t) {
                return t;
            }
            last = t;
        }
        assert!(Instant::now() < deadline, "{css}: last text {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_path(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.current_url().await.unwrap().path() != path {
        assert!(Instant::now() < deadline, "never reached {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exists(c: &Client, css: &str) -> bool {
    !c.find_all(Locator::Css(css)).await.unwrap().is_empty()
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// No JavaScript dialog is open (an `alert` from injected markup would be one).
async fn no_dialog(c: &Client) {
    if let Ok(text) = c.get_alert_text().await {
        panic!("a JavaScript dialog opened: {text:?}");
    }
}

async fn sign_in(c: &Client, api: &SigmaApi, key: &str) {
    c.goto(&format!("{}/login", api.url)).await.unwrap();
    let f = c.form(Locator::Css("form[action='/login']")).await.unwrap();
    f.set_by_name("key", key).await.unwrap();
    f.submit().await.unwrap();
}

/// The session cookie the browser holds (WebDriver can read HttpOnly cookies; page script
/// cannot, which the test checks separately).
async fn session_cookie(c: &Client) -> String {
    let k = c
        .get_named_cookie("sigma_session")
        .await
        .expect("session cookie");
    format!("sigma_session={}", k.value())
}

async fn create_vps(api: &SigmaApi, hostname: &str, country: &str, tags: &[&str]) -> String {
    let (s, v) = api
        .call(
            "POST",
            "/api/vps",
            Some(
                json!({"hostname": hostname, "purpose": "xrayr", "country": country, "tags": tags,
                        "status": "active",
                        "ip_addresses": [{"ip": "203.0.113.7", "label": "public"}]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn vps_status(api: &SigmaApi, id: &str) -> String {
    let (_, v) = api.call("GET", &format!("/api/vps/{id}"), None).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

/// A VPS whose agent reports hostile strings in its system info, through the real agent API.
async fn hostile_vps(api: &SigmaApi) -> String {
    let token = api.token(json!({"purpose": "xrayr"})).await;
    let http = reqwest::Client::new();
    let r: Value = http
        .post(format!("{}/api/agent/register", api.url))
        .bearer_auth(&token)
        .json(&json!({"hostname": "hostile.example.net",
                      "ip_addresses": [{"ip": "198.51.100.9", "label": "public"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_key = r["agent_key"].as_str().expect("agent key").to_string();
    let id = r["vps"]["id"].as_str().unwrap().to_string();
    let resp = http
        .post(format!("{}/api/agent/heartbeat", api.url))
        .bearer_auth(&agent_key)
        .json(&json!({"hostname": "hostile.example.net",
                      "system_info": {"os": HOSTILE_IMG, "kernel": HOSTILE_SCRIPT,
                                      "note": "\"><svg onload=alert(3)>"},
                      // A mesh-mode agent whose proxy is degraded, with a certificate and a
                      // token about to expire: the overview flags all three.
                      "agent_state": {"mode": "mesh", "mesh_state": {
                          "state": "degraded", "reason": HOSTILE_IMG,
                          "cert_expires_at": rfc3339(Duration::from_secs(3600)),
                          "token_expires_at": rfc3339(Duration::from_secs(120))}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // Heartbeats are written in batches; wait until it is stored.
    SigmaApi::eventually(Duration::from_secs(10), || async {
        let (_, v) = api.call("GET", &format!("/api/vps/{id}"), None).await;
        (v["system_info"]["os"] == HOSTILE_IMG).then_some(())
    })
    .await
    .expect("hostile system info stored");
    id
}

/// Now plus `d`, in RFC 3339 (UTC).
fn rfc3339(d: Duration) -> String {
    let t = std::time::SystemTime::now() + d;
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        which(&["chromium", "chromium-browser"]),
        which(&["chromedriver"]),
    ) else {
        if std::env::var("SIGMA_TEST_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("SKIPPED: console_in_a_real_browser needs chromium and chromium-driver");
        return;
    };
    let api = SigmaApi::start();
    let shots = sigma_testkit::temp_dir("web-screenshots");
    println!("console screenshots: {}", shots.display());

    // Inventory: 30 VPS (a page of the list needs filters to narrow it) and a hostile one.
    let mut ids = Vec::new();
    for i in 0..30 {
        let country = if i % 3 == 0 { "FI" } else { "DE" };
        let tags: &[&str] = if i % 5 == 0 { &["edge"] } else { &[] };
        ids.push(create_vps(&api, &format!("web-{i:02}.example.net"), country, tags).await);
    }
    let hostile = hostile_vps(&api).await;

    let (_driver, webdriver) = start_driver(&chromedriver);
    let c = browser(&webdriver, &chromium).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Signed out, every page leads to the sign-in form; a wrong key is refused there.
    c.goto(&format!("{}/vps", api.url)).await.unwrap();
    wait_path(&c, "/login").await;
    sign_in(
        &c,
        &api,
        "sgm_00000000_not-a-real-key-000000000000000000000000",
    )
    .await;
    wait_text(&c, ".error-message", |t| t.contains("not accepted")).await;

    // Sign in as admin: the overview counts the fleet.
    sign_in(&c, &api, ADMIN_KEY).await;
    wait_text(&c, "h1", |t| t == "Overview").await;
    let overview = text_of(&c, "main").await;
    assert!(overview.contains("31 VPS"), "{overview}");
    // The mesh summary: the hostile VPS's degraded proxy, its certificate (1 h left, inside
    // the 6 h window) and its token (2 min left, inside 10 min), each linking to the list.
    let attention = text_of(&c, "#mesh-attention").await;
    for label in [
        "Proxies not ready",
        "Certificates expiring within 6 h",
        "Tokens expiring within 10 min",
    ] {
        let line = attention
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_default();
        assert_eq!(
            line.split_whitespace().last(),
            Some("1"),
            "{label:?} in {attention:?}"
        );
    }
    shot(&c, &shots, "overview").await;
    c.find(Locator::LinkText("Proxies not ready"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, ".summary", |t| t.contains("of 1 ")).await;
    assert!(
        text_of(&c, "table.vps-list")
            .await
            .contains("hostile.example.net")
    );
    c.goto(&format!("{}/vps?attention=cert", api.url))
        .await
        .unwrap();
    assert!(text_of(&c, ".summary").await.contains("of 1 "));
    c.goto(&format!("{}/vps?attention=certs", api.url))
        .await
        .unwrap();
    assert!(exists(&c, "#err-attention").await, "a bad filter is named");
    c.goto(&format!("{}/", api.url)).await.unwrap();
    let cookie = c.get_named_cookie("sigma_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let from_js = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(from_js, json!(""), "page script must not see the session");
    let admin_cookie = session_cookie(&c).await;

    // Every page carries the strict policy.
    let r = http
        .get(format!("{}/vps", api.url))
        .header("cookie", &admin_cookie)
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    // The list: 31 VPS over one page of 50; filter by country, then search.
    c.goto(&format!("{}/vps", api.url)).await.unwrap();
    assert!(text_of(&c, ".summary").await.contains("of 31"));
    shot(&c, &shots, "vps-list").await;
    let f = c.form(Locator::Css("form.filters")).await.unwrap();
    f.set_by_name("country", "fi").await.unwrap();
    f.set_by_name("q", "web-1").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".summary", |t| t.contains("of 3 ")).await;
    let rows = c
        .find_all(Locator::Css("table.vps-list tbody tr"))
        .await
        .unwrap();
    // web-10 … web-19 with country FI: 12, 15, 18.
    assert_eq!(rows.len(), 3, "{}", text_of(&c, "main").await);
    assert!(
        text_of(&c, "table.vps-list")
            .await
            .contains("web-12.example.net")
    );
    c.goto(&format!("{}/vps?tag=edge&per_page=25", api.url))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("table.vps-list tbody tr"))
            .await
            .unwrap()
            .len(),
        6
    );
    c.goto(&format!("{}/vps?country=Narnia", api.url))
        .await
        .unwrap();
    assert!(
        exists(&c, "#err-country").await,
        "a bad filter is named at its field"
    );

    // Hostile system info renders as text and runs nothing.
    c.goto(&format!("{}/vps/{hostile}", api.url)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_dialog(&c).await;
    let info = text_of(&c, "#system-info").await;
    assert!(
        info.contains(HOSTILE_IMG) && info.contains(HOSTILE_SCRIPT),
        "{info}"
    );
    assert!(info.contains("\"><svg onload=alert(3)>"), "{info}");
    let injected = c
        .execute(
            "return document.querySelectorAll('main img, main svg, main script').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0));
    shot(&c, &shots, "vps-detail-hostile").await;

    // Edit a VPS: a bad country comes back at its field, with the typed value kept.
    let target = &ids[1];
    c.goto(&format!("{}/vps/{target}", api.url)).await.unwrap();
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("country", "Narnia").await.unwrap();
    f.set_by_name("alias", "front <b>door</b>").await.unwrap();
    f.submit().await.unwrap();
    let err = wait_text(&c, "#err-country", |t| !t.is_empty()).await;
    assert!(!err.is_empty(), "field error shown");
    let kept = c
        .find(Locator::Id("e-country"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("Narnia"));
    shot(&c, &shots, "vps-edit-error").await;
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("country", "se").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Saved")).await;
    let (_, v) = api.call("GET", &format!("/api/vps/{target}"), None).await;
    assert_eq!(v["country"], "SE");
    assert_eq!(v["alias"], "front <b>door</b>");

    // Contract fields: the API's decoder names an impossible date at its field, then the
    // store's rule (a cost needs a currency) names the currency; fixed, they are saved.
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("contract.cost", "4.99").await.unwrap();
    f.set_by_name("contract.expires_on", "2031-02-30")
        .await
        .unwrap();
    f.set_by_name("contract.ssh_port", "2222").await.unwrap();
    f.submit().await.unwrap();
    let err = wait_text(&c, "[id='err-contract.expires_on']", |t| !t.is_empty()).await;
    assert!(err.contains("2031-02-30"), "{err}");
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("contract.expires_on", "2031-02-28")
        .await
        .unwrap();
    f.submit().await.unwrap();
    let err = wait_text(&c, "[id='err-contract.currency']", |t| !t.is_empty()).await;
    assert!(err.contains("required"), "{err}");
    c.execute(
        "document.getElementById('err-contract.currency').scrollIntoView({block: 'center'})",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, &shots, "vps-contract-error").await;
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("contract.currency", "eur").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Saved")).await;
    let card = text_of(&c, "#contract").await;
    assert!(
        card.contains("4.99 EUR") && card.contains("2031-02-28") && card.contains("2222"),
        "{card}"
    );
    let (_, v) = api.call("GET", &format!("/api/vps/{target}"), None).await;
    assert_eq!(v["contract"]["cost"], "4.99", "{v}");
    assert_eq!(v["contract"]["currency"], "EUR", "{v}");
    assert_eq!(v["contract"]["ssh_port"], 2222, "{v}");
    // The list's expiry filter and column.
    c.goto(&format!("{}/vps?expires=3650", api.url))
        .await
        .unwrap();
    let list = text_of(&c, "table.vps-list").await;
    assert!(
        list.contains("web-01.example.net") && list.contains("2031-02-28"),
        "{list}"
    );
    assert!(text_of(&c, ".summary").await.contains("of 1 "));

    // Enrollment: a token with presets, and the one-line install command.
    c.goto(&format!("{}/enrollment", api.url)).await.unwrap();
    let f = c.form(Locator::Css("form.edit")).await.unwrap();
    f.set_by_name("name", "rack 7").await.unwrap();
    f.set_by_name("country", "NL").await.unwrap();
    f.set_by_name("max_uses", "5").await.unwrap();
    f.submit().await.unwrap();
    let cmd = c
        .wait()
        .for_element(Locator::Id("install-command"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let prefix = format!(
        "curl -fsSL '{0}/install.sh' | SIGMA_API_URL='{0}' SIGMA_ENROLLMENT_TOKEN='sge_",
        api.url
    );
    assert!(cmd.starts_with(&prefix) && cmd.ends_with("' sh"), "{cmd}");
    shot(&c, &shots, "enrollment").await;
    let token = cmd
        .split("SIGMA_ENROLLMENT_TOKEN='")
        .nth(1)
        .unwrap()
        .trim_end_matches("' sh");
    let (_, tokens) = api.call("GET", "/api/enrollment-tokens", None).await;
    let listed = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| token.starts_with(t["prefix"].as_str().unwrap()))
        .expect("token listed");
    assert_eq!(listed["presets"]["country"], "NL");
    assert_eq!(listed["max_uses"], 5);

    // Purposes: the mesh settings form names a bad port at its row; a good one is saved and
    // the JSON API sees the settings.
    c.goto(&format!("{}/purposes", api.url)).await.unwrap();
    assert!(text_of(&c, "main table").await.contains("vpn-exit"));
    c.goto(&format!("{}/purposes/vpn-exit", api.url))
        .await
        .unwrap();
    c.find(Locator::Id("m-enabled"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let f = c.form(Locator::Css("form.purpose")).await.unwrap();
    f.set_by_name("ports[0].name", "wireguard").await.unwrap();
    f.set_by_name("ports[0].number", "15006").await.unwrap();
    f.set_by_name("ports[0].protocol", "TCP").await.unwrap();
    f.submit().await.unwrap();
    let err = wait_text(&c, "[id='err-ports[0].number']", |t| !t.is_empty()).await;
    assert!(err.contains("reserved"), "{err}");
    shot(&c, &shots, "purpose-mesh-error").await;
    let f = c.form(Locator::Css("form.purpose")).await.unwrap();
    f.set_by_name("ports[0].number", "51820").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Saved")).await;
    let (_, p) = api.call("GET", "/api/purposes/vpn-exit", None).await;
    assert_eq!(p["mesh"]["enabled"], true, "{p}");
    assert_eq!(p["mesh"]["ports"][0]["number"], 51820, "{p}");
    assert_eq!(p["mesh"]["ports"][0]["name"], "wireguard", "{p}");

    // Providers: a bad country at its field; hostile notes shown as text.
    c.goto(&format!("{}/providers", api.url)).await.unwrap();
    let f = c.form(Locator::Css("form.provider")).await.unwrap();
    f.set_by_name("name", "hetzner").await.unwrap();
    f.set_by_name("country", "Narnia").await.unwrap();
    f.set_by_name("notes", HOSTILE_IMG).await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, "#err-country", |t| !t.is_empty()).await;
    let f = c.form(Locator::Css("form.provider")).await.unwrap();
    f.set_by_name("country", "de").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Provider added")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    no_dialog(&c).await;
    assert!(text_of(&c, "main table").await.contains(HOSTILE_IMG));
    shot(&c, &shots, "providers").await;

    // API keys (admin): a new key is shown once.
    c.goto(&format!("{}/api-keys", api.url)).await.unwrap();
    let f = c.form(Locator::Css("form.api-key")).await.unwrap();
    f.set_by_name("name", "ci pipeline").await.unwrap();
    f.set_by_name("role", "operator").await.unwrap();
    f.submit().await.unwrap();
    let new_key = c
        .wait()
        .for_element(Locator::Id("created-key"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(new_key.starts_with("sgm_"), "{new_key}");
    let r = http
        .get(format!("{}/api/vps?limit=1", api.url))
        .bearer_auth(&new_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new key works");
    shot(&c, &shots, "api-keys").await;

    // Audit log: filtered by action; a malformed time is named at its field.
    c.goto(&format!("{}/audit?action=purpose.update", api.url))
        .await
        .unwrap();
    let audit_text = text_of(&c, "table.audit").await;
    assert!(
        audit_text.contains("purpose.update") && !audit_text.contains("vps.create"),
        "{audit_text}"
    );
    shot(&c, &shots, "audit").await;
    c.goto(&format!("{}/audit?since=yesterday", api.url))
        .await
        .unwrap();
    assert!(exists(&c, "#err-since").await);

    // Chains: web-05 → web-06 (by hostname) → web-07 → its own service; web-08 → the
    // hostile VPS by address. Each hop says whether its route is live and its target healthy.
    c.goto(&format!("{}/chains", api.url)).await.unwrap();
    assert!(text_of(&c, "main").await.contains("No routes yet"));
    for (on, backend) in [
        (&ids[5], "web-06.example.net"),
        (&ids[6], "web-07.example.net"),
        (&ids[7], "127.0.0.1"),
        (&ids[8], "198.51.100.9"),
    ] {
        let (st, r) = api
            .call(
                "POST",
                &format!("/api/vps/{on}/envoy-routes"),
                Some(json!({"name": "hop", "listen_port": 443, "backend_host": backend, "backend_port": 443})),
            )
            .await;
        assert_eq!(st, 201, "{r}");
    }
    c.goto(&format!("{}/chains", api.url)).await.unwrap();
    let chains = text_of(&c, "main").await;
    let first = chains
        .lines()
        .find(|l| l.contains("web-05.example.net"))
        .unwrap_or_default()
        .to_string();
    assert!(
        first.contains("web-06.example.net")
            && first.contains("web-07.example.net")
            && first.contains("127.0.0.1:443")
            && first.contains("live")
            && first.contains("never heard from"),
        "{chains}"
    );
    assert!(chains.contains("xrayr → DE"), "{chains}");
    assert!(
        chains.contains("hostile.example.net"),
        "a backend named by address is found: {chains}"
    );
    shot(&c, &shots, "chains").await;

    // Retire with confirmation.
    let retired = &ids[2];
    c.goto(&format!("{}/vps/{retired}", api.url)).await.unwrap();
    c.find(Locator::Css("a[href$='/retire']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("Retire")).await;
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.contains("retiring")).await;
    assert_eq!(vps_status(&api, retired).await, "retiring");

    // Routes on the VPS page: add one (a bad port comes back at its field), see it, edit it,
    // disable it, delete it with confirmation; the JSON API sees each step.
    let routed = &ids[4];
    c.goto(&format!("{}/vps/{routed}", api.url)).await.unwrap();
    assert!(text_of(&c, "#routes").await.contains("No Envoy routes"));
    c.find(Locator::Css("#routes a[href$='/routes/new']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("New route")).await;
    let f = c.form(Locator::Css("form.route")).await.unwrap();
    f.set_by_name("name", "xray-in").await.unwrap();
    f.set_by_name("listen_port", "99999").await.unwrap();
    f.set_by_name("backend_host", "<b>bad host</b>")
        .await
        .unwrap();
    f.set_by_name("backend_port", "443").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, "#err-listen_port", |t| !t.is_empty()).await;
    assert!(
        exists(&c, "#err-backend_host").await,
        "both bad fields named"
    );
    assert_eq!(
        c.find(Locator::Id("r-backend_host"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("<b>bad host</b>"),
        "the typed value is kept, as text"
    );
    shot(&c, &shots, "route-error").await;
    let f = c.form(Locator::Css("form.route")).await.unwrap();
    f.set_by_name("listen_port", "8443").await.unwrap();
    f.set_by_name("backend_host", "10.20.0.5").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Route added")).await;
    let routes_text = text_of(&c, "#routes").await;
    assert!(
        routes_text.contains("xray-in") && routes_text.contains("10.20.0.5:443"),
        "{routes_text}"
    );
    // Where it runs today and whether its listener is live (no agent has reported here).
    assert!(
        routes_text.contains("classic")
            && routes_text.contains("unknown: its agent has not reported"),
        "{routes_text}"
    );
    shot(&c, &shots, "vps-detail-routes").await;
    let (_, listed) = api
        .call("GET", &format!("/api/vps/{routed}/envoy-routes"), None)
        .await;
    assert_eq!(listed[0]["listen_port"], 8443, "{listed}");
    assert_eq!(listed[0]["cluster_type"], "static");
    // A second route on the same port is refused at the port field.
    c.goto(&format!("{}/vps/{routed}/routes/new", api.url))
        .await
        .unwrap();
    let f = c.form(Locator::Css("form.route")).await.unwrap();
    f.set_by_name("name", "other").await.unwrap();
    f.set_by_name("listen_port", "8443").await.unwrap();
    f.set_by_name("backend_host", "backend.example.net")
        .await
        .unwrap();
    f.set_by_name("backend_port", "80").await.unwrap();
    f.submit().await.unwrap();
    let taken = wait_text(&c, "#err-listen_port", |t| !t.is_empty()).await;
    assert!(taken.contains("8443"), "{taken}");
    // Edit: a new backend port.
    c.goto(&format!("{}/vps/{routed}", api.url)).await.unwrap();
    c.find(Locator::Css("#routes a[aria-label='Edit route xray-in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("Route xray-in")).await;
    let f = c.form(Locator::Css("form.route")).await.unwrap();
    f.set_by_name("backend_port", "8080").await.unwrap();
    f.submit().await.unwrap();
    wait_text(&c, ".notice", |t| t.contains("Route saved")).await;
    assert!(text_of(&c, "#routes").await.contains("10.20.0.5:8080"));
    // Disable, then delete with confirmation.
    c.find(Locator::Css(
        "#routes button[aria-label='Disable route xray-in']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(&c, ".notice", |t| t.contains("Route disabled")).await;
    let (_, listed) = api
        .call("GET", &format!("/api/vps/{routed}/envoy-routes"), None)
        .await;
    assert_eq!(listed[0]["status"], "disabled", "{listed}");
    c.find(Locator::Css("#routes a[aria-label='Delete route xray-in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("Delete route")).await;
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, ".notice", |t| t.contains("Route deleted")).await;
    let (_, listed) = api
        .call("GET", &format!("/api/vps/{routed}/envoy-routes"), None)
        .await;
    assert_eq!(listed, json!([]));

    // The mesh section: the doctor's links, and sigma-api's report (mode off here).
    let mesh_text = text_of(&c, "#mesh").await;
    assert!(
        mesh_text.contains("Mesh chain") && mesh_text.contains("VPS active"),
        "{mesh_text}"
    );
    assert!(
        mesh_text.contains("Mesh mode"),
        "the API's report: {mesh_text}"
    );
    assert!(exists(&c, "#mesh table.doctor tbody tr").await);
    assert!(
        mesh_text.contains("route listeners"),
        "the doctor's route link, from the route plan: {mesh_text}"
    );

    // Delete a VPS with confirmation, then restore it; the history shows both.
    c.find(Locator::Css("main a[href$='/delete']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("Delete")).await;
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.contains("deleted")).await;
    assert_eq!(vps_status(&api, routed).await, "deleted");
    assert!(
        !exists(&c, "form.edit").await,
        "a deleted VPS is not edited, only restored"
    );
    c.find(Locator::Css("main a[href$='/restore']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "h1", |t| t.starts_with("Restore")).await;
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, ".notice", |t| t.contains("Restored")).await;
    assert_eq!(vps_status(&api, routed).await, "active");
    let history = text_of(&c, "#history").await;
    assert!(
        history.contains("vps.delete") && history.contains("vps.restore"),
        "{history}"
    );

    // Cross-site posts are refused: a foreign page's form, a foreign Origin, a missing token.
    let victim = &ids[3];
    let page = format!(
        "data:text/html,<form method=post action='{}/vps/{victim}/retire'><input name=csrf value=x></form>\
         <script>document.forms[0].submit()</script>",
        api.url
    );
    c.goto(&page).await.unwrap();
    SigmaApi::eventually(Duration::from_secs(10), || async {
        c.source()
            .await
            .ok()
            .filter(|s| s.contains("Request refused"))
    })
    .await
    .expect("the cross-site form post is refused");
    let csrf = {
        c.goto(&format!("{}/", api.url)).await.unwrap();
        c.find(Locator::Css("input[name=csrf]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap()
    };
    for (origin, token) in [
        ("https://evil.example", csrf.as_str()),
        (api.url.as_str(), ""),
        (api.url.as_str(), "0000"),
    ] {
        let r = http
            .post(format!("{}/vps/{victim}/retire", api.url))
            .header("cookie", &admin_cookie)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "origin {origin}, token {token:?}");
    }
    assert_eq!(vps_status(&api, victim).await, "active");

    // Sign out: the session is gone on the server, not just in the browser.
    c.goto(&format!("{}/", api.url)).await.unwrap();
    c.find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/login").await;
    let r = http
        .get(format!("{}/", api.url))
        .header("cookie", &admin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the old cookie no longer signs in");
    let (_, audit) = api
        .call("GET", "/api/audit?resource_type=session", None)
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"session.create") && actions.contains(&"session.delete"),
        "{actions:?}"
    );

    // A readonly key sees no mutation controls, and a forged POST is refused anyway.
    let (s, k) = api
        .call(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "viewer", "role": "readonly"})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    sign_in(&c, &api, k["key"].as_str().unwrap()).await;
    wait_text(&c, "h1", |t| t == "Overview").await;
    c.goto(&format!("{}/vps/{victim}", api.url)).await.unwrap();
    assert!(!exists(&c, "form.edit").await && !exists(&c, "a[href$='/retire']").await);
    assert!(
        !exists(&c, "a[href$='/routes/new']").await && !exists(&c, "a[href$='/delete']").await,
        "no route or delete controls for a readonly key"
    );
    c.goto(&format!("{}/enrollment", api.url)).await.unwrap();
    assert!(!exists(&c, "form.edit").await);
    assert!(
        !exists(&c, "nav a[href='/api-keys']").await && !exists(&c, "nav a[href='/audit']").await,
        "admin pages are not offered to a readonly key"
    );
    c.goto(&format!("{}/purposes/vpn-exit", api.url))
        .await
        .unwrap();
    assert!(!exists(&c, "form.purpose button[type=submit]").await);
    c.goto(&format!("{}/providers", api.url)).await.unwrap();
    assert!(!exists(&c, "form.provider").await);
    let ro_cookie = session_cookie(&c).await;
    let ro_csrf = c
        .find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    for path in [
        format!("/vps/{victim}/retire"),
        format!("/vps/{victim}/delete"),
        format!("/vps/{victim}/routes"),
        "/enrollment".to_string(),
        "/purposes/vpn-exit".to_string(),
        "/providers".to_string(),
        "/api-keys".to_string(),
    ] {
        let r = http
            .post(format!("{}{path}", api.url))
            .header("cookie", &ro_cookie)
            .header("origin", &api.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={ro_csrf}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(vps_status(&api, victim).await, "active");
    for path in ["/api-keys", "/audit"] {
        let r = http
            .get(format!("{}{path}", api.url))
            .header("cookie", &ro_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }

    c.close().await.unwrap();
    println!("console screenshots: {}", shots.display());
}
