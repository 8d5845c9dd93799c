//! The operator console at `/ui` over HTTP: sessions, roles, CSRF, bad input and secrets.
//! `browser.rs` drives it in a real Chromium.

mod browser;

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, spawn_app};

pub const VIEWER: &str = "flk_console_viewer_key";
pub const OPERATOR: &str = "flk_console_operator_key";
/// Appears in a run's input under a secret-named key: no page may show it.
pub const SECRET: &str = "sk-live-console-canary-5521";

/// A configuration with a viewer and an operator key, agents that sleep, fail and echo,
/// and workflows built from them.
pub fn config(extra: &str) -> String {
    let hash = flotilla_server::auth::hash_key;
    format!(
        r#"
auth:
  mode: api_key
  api_keys:
    - {{ name: ada, role: viewer, hash: "{}" }}
    - {{ name: ops, role: operator, hash: "{}" }}
agents:
  echo: {{ kind: builtin, builtin: echo }}
  nap: {{ kind: builtin, builtin: sleep }}
  broken: {{ kind: builtin, builtin: fail, failure_rate: 1.0 }}
  flaky:
    kind: builtin
    builtin: fail
    failure_rate: 1.0
    circuit_breaker: {{ failure_threshold: 2, reset_timeout: 600s, half_open_successes: 1 }}
workflows:
  pipeline:
    steps:
      - {{ id: plan, agent: echo }}
      - {{ id: wait, agent: nap, needs: [plan], input: {{ ms: 1 }} }}
      - {{ id: fetch, agent: echo, needs: [plan] }}
      - {{ id: report, agent: echo, needs: [wait, fetch] }}
  slow:
    steps:
      - {{ id: think, agent: nap, input: {{ ms: 5000 }} }}
      - {{ id: answer, agent: echo, needs: [think] }}
  stuck:
    steps:
      - {{ id: forever, agent: nap, input: {{ ms: 600000 }} }}
  brittle:
    steps:
      - {{ id: call, agent: flaky }}
  retried:
    steps:
      - {{ id: call, agent: broken, retry: {{ attempts: 3, initial: 10ms }} }}
{extra}"#,
        hash(VIEWER),
        hash(OPERATOR),
    )
}

/// A browser's cookies and the CSRF token of its pages, kept by hand (the cookies are
/// `Secure`, which a cookie jar would not send over plain HTTP to a test server).
pub struct Session {
    cookies: Vec<(String, String)>,
    pub csrf: String,
}

fn set_cookies(r: &reqwest::Response, into: &mut Vec<(String, String)>) {
    for v in r.headers().get_all("set-cookie") {
        let v = v.to_str().unwrap();
        let (kv, _) = v.split_once(';').unwrap_or((v, ""));
        let (k, val) = kv.split_once('=').unwrap();
        into.retain(|(n, _)| n != k);
        if !v.contains("Max-Age=0") {
            into.push((k.to_owned(), val.to_owned()));
        }
    }
}

/// The value of the first `name="csrf"` field of a page.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

impl Session {
    fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Signs in with `credential` through the sign-in form.
    pub async fn sign_in(app: &TestApp, credential: &str) -> Session {
        let mut s = Session {
            cookies: Vec::new(),
            csrf: String::new(),
        };
        let (code, page) = s.get(app, "/ui/login").await;
        assert_eq!(code, 200, "{page}");
        s.csrf = csrf_of(&page);
        let (code, _, location) = s
            .post(
                app,
                "/ui/login",
                &[("credential", credential), ("next", "/ui/agents")],
            )
            .await;
        assert_eq!(code, 303, "signed in");
        assert_eq!(location, "/ui/agents");
        let (code, page) = s.get(app, "/ui/runs").await;
        assert_eq!(code, 200, "{page}");
        s.csrf = csrf_of(&page);
        s
    }

    /// GET without following redirects: (status, body or Location).
    pub async fn get(&mut self, app: &TestApp, path: &str) -> (u16, String) {
        let r = client()
            .get(app.url(path))
            .header("cookie", self.header())
            .send()
            .await
            .unwrap();
        set_cookies(&r, &mut self.cookies);
        let code = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        // minijinja escapes `/` in attributes; the tests read paths as written.
        let body = r.text().await.unwrap().replace("&#x2f;", "/");
        (code, location.unwrap_or(body))
    }

    /// POSTs a form with this session's CSRF token: (status, body, Location).
    pub async fn post(
        &mut self,
        app: &TestApp,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String, String) {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("csrf", &self.csrf);
        form.extend_pairs(fields);
        let r = client()
            .post(app.url(path))
            .header("cookie", self.header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.finish())
            .send()
            .await
            .unwrap();
        set_cookies(&r, &mut self.cookies);
        let code = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map_or(String::new(), |l| l.to_str().unwrap().to_owned());
        (code, r.text().await.unwrap(), location)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Starts a run with the operator key.
pub async fn start(app: &TestApp, workflow: &str, input: Value, metadata: Value) -> String {
    let r = app
        .client
        .post(app.url(&format!("/api/v1/workflows/{workflow}/runs")))
        .bearer_auth(OPERATOR)
        .json(&json!({"input": input, "metadata": metadata}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls a run (with the operator key) until `pred` holds.
pub async fn wait(app: &TestApp, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let run: Value = app
            .client
            .get(app.url(&format!("/api/v1/runs/{id}")))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pred(&run) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id} never reached the awaited state");
}

#[tokio::test]
async fn pages_need_a_session_and_a_viewer_cannot_act() {
    let app = spawn_app(&config("")).await;
    let running = start(&app, "stuck", json!({}), json!({})).await;
    wait(&app, &running, |r| r["status"] == "running").await;
    // Without a session every page sends the browser to sign in, and comes back after.
    let mut anonymous = Session {
        cookies: Vec::new(),
        csrf: String::new(),
    };
    let (code, location) = anonymous.get(&app, "/ui/runs?status=running").await;
    assert_eq!(code, 303);
    assert_eq!(location, "/ui/login?next=%2Fui%2Fruns%3Fstatus%3Drunning");
    // A wrong key is refused on the sign-in page itself.
    let (_, page) = anonymous.get(&app, "/ui/login").await;
    anonymous.csrf = csrf_of(&page);
    let (code, page, _) = anonymous
        .post(&app, "/ui/login", &[("credential", "flk_wrong")])
        .await;
    assert_eq!(code, 401);
    assert!(page.contains("invalid credentials"), "{page}");
    // The viewer sees the run but no cancel button, and the POST is refused.
    let mut viewer = Session::sign_in(&app, VIEWER).await;
    let (code, page) = viewer.get(&app, &format!("/ui/runs/{running}")).await;
    assert_eq!(code, 200);
    assert!(
        page.contains(&running) && !page.contains("Cancel run"),
        "{page}"
    );
    let (code, page, _) = viewer
        .post(&app, &format!("/ui/runs/{running}/cancel"), &[])
        .await;
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("operator"), "{page}");
    // The operator can.
    let mut ops = Session::sign_in(&app, OPERATOR).await;
    let (_, page) = ops.get(&app, &format!("/ui/runs/{running}")).await;
    assert!(page.contains("Cancel run"), "{page}");
    // …but not without the token of its own session, nor with the viewer's.
    let own = ops.csrf.clone();
    for token in ["", viewer.csrf.as_str()] {
        ops.csrf = token.to_owned();
        let (code, _, _) = ops
            .post(&app, &format!("/ui/runs/{running}/cancel"), &[])
            .await;
        assert_eq!(code, 403, "token `{token}`");
    }
    assert_eq!(wait(&app, &running, |_| true).await["status"], "running");
    ops.csrf = own;
    let (code, _, location) = ops
        .post(&app, &format!("/ui/runs/{running}/cancel"), &[])
        .await;
    assert_eq!(code, 303);
    assert_eq!(location, format!("/ui/runs/{running}"));
    wait(&app, &running, |r| r["status"] == "cancelled").await;
    // A second cancel says why it cannot.
    let (code, page, _) = ops
        .post(&app, &format!("/ui/runs/{running}/cancel"), &[])
        .await;
    assert_eq!(code, 409, "{page}");
    // Signing out forgets the session.
    let (code, _, location) = ops.post(&app, "/ui/logout", &[]).await;
    assert_eq!((code, location.as_str()), (303, "/ui/login"));
    let (code, _) = ops.get(&app, "/ui/runs").await;
    assert_eq!(code, 303);
}

#[tokio::test]
async fn bad_input_gets_a_page_that_says_what_is_wrong() {
    let app = spawn_app(&config("")).await;
    let mut ops = Session::sign_in(&app, OPERATOR).await;
    for (path, code, says) in [
        ("/ui/runs?status=lost", 400, "no run status `lost`"),
        ("/ui/runs?since=soon", 400, "`since` must be a duration"),
        ("/ui/runs?from=yesterday", 400, "`from` must be a time"),
        (
            "/ui/runs?meta=bad%20key%3Dx",
            400,
            "`meta` must be key=value",
        ),
        (
            "/ui/runs/no-such-run",
            404,
            "No run has the id `no-such-run`",
        ),
        ("/ui/rollouts/nope", 404, "No rollout is named `nope`"),
        ("/ui/static/nope.js", 404, "no file"),
        (
            "/ui/flags?flag=nope&context=%7B%7D",
            400,
            "no flag named `nope`",
        ),
        ("/ui/flags?flag=nope&context=%5B", 400, "not valid JSON"),
    ] {
        let (got, page) = ops.get(&app, path).await;
        assert_eq!(got, code, "{path}: {page}");
        assert!(
            page.contains(&says.replace('`', "&#96;")) || page.contains(says),
            "{path}: {page}"
        );
    }
    let (code, page, _) = ops.post(&app, "/ui/rollouts/x/launch", &[]).await;
    assert_eq!(code, 404, "{page}");
    // A sign-in never sends the browser to another site.
    let (_, page) = ops.get(&app, "/ui/login").await;
    ops.csrf = csrf_of(&page);
    let (code, _, location) = ops
        .post(
            &app,
            "/ui/login",
            &[("credential", OPERATOR), ("next", "https://evil.example/")],
        )
        .await;
    assert_eq!((code, location.as_str()), (303, "/ui/runs"));
}

#[tokio::test]
async fn runs_filter_by_status_workflow_and_metadata_with_counts_and_pages() {
    let app = spawn_app(&config("")).await;
    let mut ids = Vec::new();
    for i in 0..55 {
        let team = if i % 5 == 0 { "red" } else { "blue" };
        ids.push(start(&app, "pipeline", json!({"i": i}), json!({"team": team})).await);
    }
    let failed = start(&app, "brittle", json!({}), json!({})).await;
    for id in ids.iter().chain([&failed]) {
        wait(&app, id, |r| r["finished_at"].is_string()).await;
    }
    let mut ops = Session::sign_in(&app, OPERATOR).await;
    let (_, page) = ops.get(&app, "/ui/runs").await;
    // Counts per status, the newest first, a page of 50 and a link to the next.
    assert!(
        page.contains("succeeded <span class=\"n\">55</span>"),
        "{page}"
    );
    assert!(page.contains("failed <span class=\"n\">1</span>"), "{page}");
    assert!(page.find(&failed).unwrap() < page.find(&ids[54]).unwrap());
    assert_eq!(page.matches("<tr>").count(), 51, "a header and 50 runs");
    let next = format!("/ui/runs?before={}", ids[6]);
    assert!(page.contains(&next.replace('&', "&amp;")), "{page}");
    let (_, older) = ops.get(&app, &next).await;
    assert_eq!(older.matches("<tr>").count(), 7, "the 6 oldest");
    let link = |id: &str| format!("/ui/runs/{id}?");
    assert!(older.contains(&link(&ids[0])) && !older.contains(&link(&ids[6])));
    // Filters combine, and their counts follow.
    let (_, red) = ops
        .get(&app, "/ui/runs?workflow=pipeline&meta=team%3Dred")
        .await;
    assert_eq!(red.matches("<tr>").count(), 12, "{red}");
    assert!(red.contains("all <span class=\"n\">11</span>"), "{red}");
    let (_, failing) = ops.get(&app, "/ui/runs?status=failed").await;
    assert!(failing.contains(&link(&failed)) && !failing.contains(&link(&ids[0])));
    let (_, none) = ops
        .get(&app, "/ui/runs?since=1h&to=2000-01-01T00:00:00Z")
        .await;
    assert!(none.contains("No run matches these filters."), "{none}");
}

#[tokio::test]
async fn no_page_shows_a_secret_and_auth_off_says_so() {
    let app = spawn_app(&config("")).await;
    let id = start(
        &app,
        "pipeline",
        json!({"api_key": SECRET, "password": SECRET}),
        json!({"token": SECRET}),
    )
    .await;
    wait(&app, &id, |r| r["status"] == "succeeded").await;
    let mut ops = Session::sign_in(&app, OPERATOR).await;
    for path in [
        "/ui/runs".to_owned(),
        format!("/ui/runs/{id}"),
        "/ui/agents".into(),
        "/ui/flags".into(),
        "/ui/rollouts".into(),
    ] {
        let (code, page) = ops.get(&app, &path).await;
        assert_eq!(code, 200, "{path}: {page}");
        for secret in [SECRET, OPERATOR, VIEWER] {
            assert!(!page.contains(secret), "{path} shows a secret");
        }
        assert!(!page.contains("Authentication is off"));
    }
    let (_, page) = ops.get(&app, &format!("/ui/runs/{id}")).await;
    assert!(page.contains("api_key&quot;: &quot;***&quot;"), "{page}");
    // With auth off, every page says so, and needs no sign-in.
    let open = spawn_app("agents: { echo: { kind: builtin, builtin: echo } }\n").await;
    let mut anyone = Session {
        cookies: Vec::new(),
        csrf: String::new(),
    };
    let (code, page) = anyone.get(&open, "/ui/agents").await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Authentication is off"), "{page}");
}

#[tokio::test]
async fn every_attempt_is_its_own_bar_on_the_timeline() {
    let app = spawn_app(&config("")).await;
    let id = start(&app, "retried", json!({}), json!({})).await;
    wait(&app, &id, |r| r["status"] == "failed").await;
    let mut ops = Session::sign_in(&app, OPERATOR).await;
    let (code, page) = ops.get(&app, &format!("/ui/runs/{id}")).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page.matches("class=\"bar a-retried\"").count(), 2, "{page}");
    assert_eq!(page.matches("class=\"bar a-failed\"").count(), 1, "{page}");
    for n in 1..=3 {
        assert!(page.contains(&format!("call attempt {n}:")), "{page}");
    }
    // The DAG shows the failed step; the page offers a re-run, which starts a new run.
    assert!(page.contains("node s-failed"), "{page}");
    let (code, _, location) = ops.post(&app, &format!("/ui/runs/{id}/rerun"), &[]).await;
    assert_eq!(code, 303);
    let again = location.trim_start_matches("/ui/runs/");
    assert_ne!(again, id);
    let rerun = wait(&app, again, |r| r["status"] == "failed").await;
    assert_eq!(rerun["metadata"]["rerun_of"], id);
}

#[tokio::test]
async fn a_jwt_signs_in_and_an_expired_one_sends_the_browser_back_to_sign_in() {
    const SECRET_KEY: &str = "hs256-console-test-secret-long-enough-1234";
    let app = spawn_app(&config("").replace(
        "  mode: api_key\n",
        &format!("  mode: any\n  jwt: {{ algorithm: HS256, secret: \"{SECRET_KEY}\" }}\n"),
    ))
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |exp: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "grace", "role": "operator", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET_KEY.as_bytes()),
        )
        .unwrap()
    };
    let mut grace = Session::sign_in(&app, &token(now + 600)).await;
    let (code, page) = grace.get(&app, "/ui/agents").await;
    assert_eq!(code, 200);
    assert!(page.contains("grace (operator)"), "{page}");
    // A session whose token has expired is forgotten, and the browser signs in again.
    let mut stale = Session {
        cookies: vec![("flotilla_session".into(), token(now - 600))],
        csrf: String::new(),
    };
    let (code, location) = stale.get(&app, "/ui/runs").await;
    assert_eq!(
        (code, location.as_str()),
        (303, "/ui/login?next=%2Fui%2Fruns")
    );
    assert!(
        stale.cookies.iter().all(|(k, _)| k != "flotilla_session"),
        "the stale cookie is cleared"
    );
}
