//! Rendering a page: its template inside the layout every page shares.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Value, context};

use super::error::ConsoleError;
use super::session::User;
use super::templates::{ENV, with_headers};

/// A page: `template` with `data`, inside the layout, for `user`; `nav` marks the menu entry.
pub(crate) fn render(
    template: &str,
    nav: &str,
    title: &str,
    user: &User,
    data: Value,
) -> Result<Response, ConsoleError> {
    render_status(StatusCode::OK, template, nav, title, user, data)
}

pub(crate) fn render_status(
    status: StatusCode,
    template: &str,
    nav: &str,
    title: &str,
    user: &User,
    data: Value,
) -> Result<Response, ConsoleError> {
    let page = context! {
        nav, title, data, version => env!("CARGO_PKG_VERSION"),
        user => context! {
            name => user.name.clone(), role => user.role.map(role_name),
            can_operate => user.can_operate(), auth_off => user.auth_off, signed_in => user.role.is_some() && !user.auth_off,
        },
        csrf => user.csrf.clone(),
    };
    let html = ENV
        .get_template(template)
        .and_then(|t| t.render(page))
        .map_err(|e| ConsoleError::internal(format!("rendering {template}: {e:#}")))?;
    Ok(with_headers((status, Html(html)).into_response()))
}

fn role_name(r: flotilla_spec::Role) -> &'static str {
    match r {
        flotilla_spec::Role::Viewer => "viewer",
        flotilla_spec::Role::Operator => "operator",
        flotilla_spec::Role::Admin => "admin",
    }
}
