//! The console's token. When one is set (it must be for any address but
//! loopback), every path needs it: a browser gives it once, through the
//! login form or `?token=TOKEN` in a bookmark, and gets it back as an
//! HttpOnly, SameSite=Strict cookie; a scraper sends `Authorization: Bearer
//! TOKEN` (Prometheus' `authorization: {credentials_file: ...}`). Tokens
//! are compared in constant time. The console only reads, so there is no
//! state for a forged request to change. Plain HTTP carries the token in
//! the clear: across networks you do not trust, put the console behind
//! TLS (a reverse proxy) or an SSH tunnel.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use axum::extract::{Form, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::App;

const COOKIE: &str = "camnode_token";
/// Shortest token accepted: guessing it over the network must be hopeless.
const MIN_LENGTH: usize = 16;

/// Checks a token read from `path`: long enough, and only characters a
/// cookie and a header carry unchanged.
pub fn check_token(token: String, path: &Path) -> Result<String> {
    if token.len() < MIN_LENGTH || !token.bytes().all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b)) {
        bail!(
            "[console] token_file = {path:?} must hold one line of at least {MIN_LENGTH} printable characters without spaces, ';', ',', '\"' or '\\': \
             make one with `head -c 24 /dev/urandom | base64 > {}`",
            path.display()
        );
    }
    Ok(token)
}

/// Lets a request through if no token is set or it presents the right one;
/// `/login` and `?token=` give a browser its cookie.
pub async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = app.token.as_deref() else { return next.run(request).await };
    if presented(request.headers()).is_some_and(|given| same(given, token)) || (request.uri().path() == "/login" && request.method() == Method::POST) {
        return next.run(request).await;
    }
    // As typed (a base64 token's '+' stays) or percent-decoded.
    let raw = request.uri().query().and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
    let decoded = Query::<Login>::try_from_uri(request.uri()).ok().map(|q| q.0.token);
    if raw.is_some_and(|given| same(given, token)) || decoded.as_deref().is_some_and(|given| same(given, token)) {
        // The same page without the token in the address bar or the history.
        return with_cookie(Redirect::to(request.uri().path()), token);
    }
    refuse(request.headers(), raw.is_some())
}

/// The token a request carries, in its cookie or as a bearer.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
    })
}

/// Equal, in time that does not depend on where they differ.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn with_cookie(response: impl IntoResponse, token: &str) -> Response {
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000");
    ([(header::SET_COOKIE, cookie)], response).into_response()
}

/// 401: the login page for a browser, one line for anything else.
fn refuse(headers: &HeaderMap, wrong: bool) -> Response {
    let browser = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    if !browser {
        return (StatusCode::UNAUTHORIZED, "this console needs its token: send Authorization: Bearer TOKEN\n").into_response();
    }
    let page = include_str!("assets/login.html").replace("{{wrong}}", if wrong { "That token is not right." } else { "" });
    (StatusCode::UNAUTHORIZED, Html(page)).into_response()
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// The login form's answer: the cookie and the console, or the form again.
pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, Form(login): Form<Login>) -> Response {
    match app.token.as_deref() {
        Some(token) if same(login.token.trim(), token) => with_cookie(Redirect::to("/"), token),
        Some(_) => refuse(&headers, true),
        None => Redirect::to("/").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_long_and_plain() {
        let path = Path::new("/etc/camnode/console.token");
        assert!(check_token("abcdefghijklmnop+/=".into(), path).is_ok());
        assert!(check_token("short".into(), path).unwrap_err().to_string().contains("at least 16"));
        assert!(check_token("abcdefghijklmnop;q".into(), path).is_err());
        assert!(check_token("abcdefgh ijklmnopq".into(), path).is_err());
    }

    #[test]
    fn the_token_comes_from_a_bearer_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(header::COOKIE, "theme=dark; camnode_token=secret123".parse().unwrap());
        assert_eq!(presented(&headers), Some("secret123"));
        headers.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(presented(&headers), Some("other"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
