//! The operator console at `/ui`: server-rendered pages over the same engine, principals and
//! roles as the API. Everything it serves is embedded in the binary (no build step, no CDN);
//! a small script follows live changes over server-sent events and re-renders the page's
//! content in place.
//!
//! Pages read what the API reads: runs (keyset pages of summary columns, counts per status),
//! a run with its DAG and attempt timeline, agents, flags, and rollouts from the rollout
//! store. Actions (cancel, re-run, rollout commands) need the operator role and a CSRF token.

mod error;
mod fleet;
mod format;
mod graph;
mod page;
mod runs;
mod session;
mod templates;

pub use fleet::Rollouts;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Group;
use error::ConsoleError;
use page::render_status;
use session::User;

/// Every console route, each group behind the console's session check for its role.
pub(crate) fn router(state: &AppState) -> Router<AppState> {
    let group = |group: Group, routes: Router<AppState>, bounded: bool| {
        let routes = routes.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), group),
            session::layer,
        ));
        if bounded {
            routes.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::observe::deadline,
            ))
        } else {
            routes
        }
    };
    let open = Router::new()
        .route("/ui/login", get(login_page).post(sign_in))
        .route("/ui/logout", post(sign_out));
    let read = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::detail))
        .route("/ui/agents", get(fleet::agents))
        .route("/ui/flags", get(fleet::flags))
        .route("/ui/rollouts", get(fleet::rollouts))
        .route("/ui/rollouts/{name}", get(fleet::rollout));
    let operate = Router::new()
        .route("/ui/runs/{id}/cancel", post(runs::cancel))
        .route("/ui/runs/{id}/rerun", post(runs::rerun))
        .route("/ui/rollouts/{name}/{command}", post(fleet::command));
    Router::new()
        .route("/ui/static/{file}", get(asset))
        .merge(group(Group::Open, open, true))
        .merge(group(Group::Read, read, true))
        .merge(group(
            Group::Read,
            Router::new().route("/ui/live", get(runs::live)),
            false,
        ))
        .merge(group(Group::Operate, operate, true))
}

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// The stylesheet and the script, cached for an hour (their URLs carry the version).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return ConsoleError::not_found(format!("no file `{file}`")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a console path may be gone to after signing in (never another site).
fn safe_next(next: Option<&str>) -> &str {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.contains('\\'))
        .unwrap_or("/ui/runs")
}

async fn login_page(
    user: User,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Result<Response, ConsoleError> {
    login_form(&user, StatusCode::OK, q.next.as_deref(), None)
}

fn login_form(
    user: &User,
    status: StatusCode,
    next: Option<&str>,
    error: Option<&str>,
) -> Result<Response, ConsoleError> {
    render_status(
        status,
        "login.html",
        "login",
        "Sign in",
        user,
        context! { next => safe_next(next), error },
    )
}

#[derive(Deserialize)]
struct SignIn {
    credential: String,
    csrf: String,
    next: Option<String>,
}

/// Checks the key or token as the API would, then keeps it in the session cookie.
async fn sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<crate::Peer>>>,
    user: User,
    axum::Form(form): axum::Form<SignIn>,
) -> Result<Response, ConsoleError> {
    user.check_csrf(&form.csrf)?;
    let credential = form.credential.trim();
    let next = form.next.as_deref();
    if !session::cookie_safe(credential) {
        return login_form(
            &user,
            StatusCode::UNAUTHORIZED,
            next,
            Some("That is not an API key or a token."),
        );
    }
    let mut probe = axum::http::Request::new(axum::body::Body::empty());
    if let Some(peer) = peer {
        probe.extensions_mut().insert(peer.0);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {credential}")) {
        probe.headers_mut().insert(header::AUTHORIZATION, v);
    }
    match crate::auth::check(&state.auth, Group::Read, &mut probe) {
        Ok(()) => {
            let mut resp = Redirect::to(safe_next(next)).into_response();
            resp.headers_mut().append(
                header::SET_COOKIE,
                session::set_cookie(session::SESSION, credential, Some(12 * 3600)),
            );
            Ok(resp)
        }
        Err(e) => {
            let (status, _) = e.parts();
            login_form(&user, status, next, Some(&e.to_string()))
        }
    }
}

async fn sign_out(_: session::Verified) -> Result<Response, ConsoleError> {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(session::SESSION, "", Some(0)),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_follow_a_sign_in() {
        assert_eq!(
            safe_next(Some("/ui/runs?status=failed")),
            "/ui/runs?status=failed"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/api/v1/runs",
            "/ui/\\evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/runs", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/runs");
    }
}
