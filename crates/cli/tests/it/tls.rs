//! HTTPS with a test CA, and certificate reload without dropping connections.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::app::spawn_app_with;

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, under `prefix`.
fn make_ca_and_cert(dir: &Path, prefix: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_key = format!("{prefix}-ca.key");
    let ca = format!("{prefix}-ca.pem");
    let key = format!("{prefix}.key");
    let csr = format!("{prefix}.csr");
    let cert = format!("{prefix}.pem");
    let ext = format!("{prefix}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &format!("/CN=flotilla test CA {prefix}"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
}

fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_test_ca_and_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    make_ca_and_cert(&d, "one");
    make_ca_and_cert(&d, "two");
    std::fs::copy(d.join("one.pem"), d.join("server.pem")).unwrap();
    std::fs::copy(d.join("one.key"), d.join("server.key")).unwrap();
    let yaml = format!(
        "storage: {{ url: \"sqlite://{db}\" }}\nserver: {{ tls: {{ cert: \"{c}\", key: \"{k}\" }} }}\nagents: {{ echo: {{ kind: builtin, builtin: echo }} }}\n",
        db = d.join("f.db").display(),
        c = d.join("server.pem").display(),
        k = d.join("server.key").display(),
    );
    let app = spawn_app_with(dir, &yaml, client_trusting(&d.join("one-ca.pem"))).await;
    assert!(app.addr.starts_with("https://127.0.0.1:"), "{}", app.addr);
    let r = app.client.get(app.url("/version")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    let plain = reqwest::Client::new()
        .get(app.url("/version").replace("https://", "http://"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "no plain HTTP on the TLS port"
    );

    // Replace the files (as a secret rotation does); new handshakes get the new certificate.
    std::fs::copy(d.join("two.key"), d.join("server.key.new")).unwrap();
    std::fs::copy(d.join("two.pem"), d.join("server.pem.new")).unwrap();
    std::fs::rename(d.join("server.key.new"), d.join("server.key")).unwrap();
    std::fs::rename(d.join("server.pem.new"), d.join("server.pem")).unwrap();
    let second = client_trusting(&d.join("two-ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while second.get(app.url("/version")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first client's open connection survived the reload.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(app.log_text().contains("TLS certificate reloaded"));

    // A broken file is logged and the last good certificate stays in use.
    std::fs::write(d.join("server.pem.new"), "not a certificate\n").unwrap();
    std::fs::rename(d.join("server.pem.new"), d.join("server.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.log_text().contains("TLS certificate not reloaded") {
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = client_trusting(&d.join("two-ca.pem"));
    let r = fresh.get(app.url("/version")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a new handshake still gets the last good certificate"
    );
}

#[test]
fn unusable_tls_files_stop_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "server: { tls: { cert: /nonexistent/cert.pem, key: /nonexistent/key.pem } }\n",
    )
    .unwrap();
    let (code, _, err) = crate::app::flotilla(
        dir.path(),
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.tls: reading certificate /nonexistent/cert.pem"),
        "{err}"
    );
}
