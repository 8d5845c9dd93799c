//! The templates, embedded in the binary, and the headers every page carries.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use minijinja::Environment;

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("templates/", $name)))),*]
    };
}

pub(crate) static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in templates!(
        "layout.html",
        "login.html",
        "error.html",
        "runs.html",
        "run.html",
        "agents.html",
        "flags.html",
        "rollouts.html",
        "rollout.html",
    ) {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("console template {name}: {e}"));
    }
    env.add_filter("time", |ms: i64| super::format::time(ms));
    env.add_filter("dur", |ms: i64| super::format::duration(ms));
    env
});

/// Console pages load only their own script and styles, are never framed, never cached.
pub(crate) fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
