//! Who is using the console: the API's credentials, kept in a cookie, checked by the API's
//! own auth per route group; and the CSRF token every form carries.
//!
//! Signing in stores the API key or JWT in `flotilla_session` (`HttpOnly; Secure;
//! SameSite=Strict`, path `/ui`): scripts cannot read it and other sites cannot send it. A
//! random `flotilla_csrf` cookie is set on the first page; each form posts a token derived
//! from it and the session, which another site can neither read nor compute.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use flotilla_spec::Role;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{Group, Principal};
use crate::error::ApiError;

use super::error::ConsoleError;

pub(crate) const SESSION: &str = "flotilla_session";
const CSRF: &str = "flotilla_csrf";

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(parts: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    parts
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console's cookies.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; Secure; SameSite=Strict{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// Whether `s` can be a cookie value as is (API keys and JWTs can).
pub(crate) fn cookie_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
}

fn token(csrf_cookie: &str, session: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"flotilla console csrf\0");
    h.update(csrf_cookie.as_bytes());
    h.update(b"\0");
    h.update(session.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The CSRF cookie of this request, or the one its response sets.
#[derive(Clone)]
struct CsrfCookie(String);

/// Puts the session cookie where the API's auth looks, checks the group's role like the API
/// does, and turns a refusal into a page (or a sign-in redirect) rather than JSON.
pub(crate) async fn layer(
    State((state, group)): State<(AppState, Group)>,
    mut req: Request,
    next: Next,
) -> Response {
    let fresh = cookie(req.headers(), CSRF)
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .is_none()
        .then(|| hex::encode(rand::random::<[u8; 16]>()));
    let csrf = fresh
        .clone()
        .or_else(|| cookie(req.headers(), CSRF).map(str::to_owned))
        .unwrap_or_default();
    req.extensions_mut().insert(CsrfCookie(csrf));
    if !req.headers().contains_key(header::AUTHORIZATION)
        && let Some(session) = cookie(req.headers(), SESSION).filter(|s| cookie_safe(s))
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {session}"))
    {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let mut resp = match crate::auth::check(&state.auth, group, &mut req) {
        Ok(()) => next.run(req).await,
        Err(ApiError::Unauthorized(_)) if req.method() == Method::GET => {
            let here = req
                .uri()
                .path_and_query()
                .map_or("/ui/runs", |p| p.as_str());
            let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            let mut resp = Redirect::to(&format!("/ui/login?next={next}")).into_response();
            if cookie(req.headers(), SESSION).is_some() {
                // A stale session (an expired token, a revoked key): forget it.
                resp.headers_mut()
                    .append(header::SET_COOKIE, set_cookie(SESSION, "", Some(0)));
            }
            resp
        }
        Err(e) => {
            if let ApiError::TooManyRequests { group, .. } = &e {
                state.metrics.rate_limited(group);
            }
            ConsoleError::from(e).into_response()
        }
    };
    if let Some(fresh) = fresh {
        resp.headers_mut()
            .append(header::SET_COOKIE, set_cookie(CSRF, &fresh, None));
    }
    resp
}

/// The signed-in user of a console request, and the token its forms carry.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// Key name, token subject, or (auth off) the client address.
    pub name: String,
    /// What it may do.
    pub role: Option<Role>,
    /// `auth.mode: none`.
    pub auth_off: bool,
    /// The CSRF token of this session.
    pub csrf: String,
}

impl User {
    /// May cancel, re-run and steer rollouts.
    pub fn can_operate(&self) -> bool {
        self.role.is_some_and(|r| r >= Role::Operator)
    }

    /// Refuses a form whose token is not this session's.
    pub fn check_csrf(&self, posted: &str) -> Result<(), ConsoleError> {
        if !self.csrf.is_empty() && posted == self.csrf {
            Ok(())
        } else {
            Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the console. Reload the page and try again.",
            ))
        }
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().cloned();
        let csrf_cookie = parts
            .extensions
            .get::<CsrfCookie>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let session = cookie(&parts.headers, SESSION).unwrap_or_default();
        Ok(User {
            name: principal
                .as_ref()
                .map_or_else(String::new, |p| p.name.clone()),
            role: principal.and_then(|p| p.role),
            auth_off: state.auth.is_off(),
            csrf: if csrf_cookie.is_empty() {
                String::new()
            } else {
                token(&csrf_cookie, session)
            },
        })
    }
}

/// A form posted from this session's own pages: the user, once the form's CSRF token
/// checked out.
pub(crate) struct Verified(pub User);

#[derive(serde::Deserialize)]
struct CsrfField {
    csrf: String,
}

impl FromRequest<AppState> for Verified {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = User::from_request_parts(&mut parts, state).await?;
        let axum::Form(form) =
            axum::Form::<CsrfField>::from_request(Request::from_parts(parts, body), state)
                .await
                .map_err(|e| ConsoleError::bad_request(e.body_text()))?;
        user.check_csrf(&form.csrf)?;
        Ok(Verified(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; flotilla_session=k.e-y"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION), Some("k.e-y"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn the_token_depends_on_both_cookies() {
        assert_ne!(token("a", "s"), token("b", "s"));
        assert_ne!(token("a", "s"), token("a", "t"));
        assert_eq!(token("a", "s").len(), 32);
    }

    #[test]
    fn cookie_attributes_keep_the_session_from_scripts_and_other_sites() {
        let v = set_cookie(SESSION, "x", None);
        let v = v.to_str().unwrap();
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
            assert!(v.contains(attr), "{v}");
        }
        assert!(!cookie_safe("a b"));
        assert!(!cookie_safe("a;b"));
        assert!(cookie_safe("eyJ.eyJ.sig-_"));
    }
}
