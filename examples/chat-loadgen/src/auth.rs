//! Getting users and their credentials: fresh users with Bearer tokens (chatcore), or session
//! cookies of existing users (the original app).

use std::path::Path;

use futures_util::{StreamExt, TryStreamExt, stream};
use http::HeaderValue;
use http::header::{COOKIE, HeaderName};
use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;

use crate::cli::{Args, AuthMode};
use crate::progress::Progress;
use crate::{Error, Result};

/// `X-CSRFToken`, the header Django compares with the CSRF cookie.
pub(crate) const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrftoken");

/// Whether `c` may appear in a username (letters, digits and `@ . + - _`).
pub(crate) fn is_username_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_')
}

/// How one user proves who they are, as ready-made header values.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(HeaderValue),
    /// A session cookie (plus the CSRF cookie) and the matching `X-CSRFToken` value.
    Cookie {
        /// The whole `Cookie` header.
        cookie: HeaderValue,
        /// The `X-CSRFToken` header.
        csrf: HeaderValue,
    },
}

/// One user the load generator acts as.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The username.
    pub username: String,
    /// How requests of this user authenticate.
    pub credential: Credential,
}

impl Session {
    /// The headers that authenticate a request of this user.
    pub(crate) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match &self.credential {
            Credential::Bearer(value) => vec![(http::header::AUTHORIZATION, value.clone())],
            Credential::Cookie { cookie, csrf } => {
                vec![(COOKIE, cookie.clone()), (CSRF_HEADER, csrf.clone())]
            }
        }
    }
}

/// A user-name prefix unique to this run: `lg`, 10 random lowercase letters and digits, `_`.
///
/// ```
/// let p = chat_loadgen::auth::run_prefix();
/// assert!(p.starts_with("lg") && p.ends_with('_'));
/// ```
pub fn run_prefix() -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let random: String = (0..10)
        .map(|_| char::from(DIGITS[rng.random_range(0..DIGITS.len())]))
        .collect();
    format!("lg{random}_")
}

#[derive(Serialize)]
struct Credentials<'a> {
    username: &'a str,
    password: &'a str,
}

/// Creates `args.users` fresh users (token mode) or reads the existing ones (original mode)
/// and returns a logged-in session for each.
pub(crate) async fn sessions(
    args: &Args,
    http: &reqwest::Client,
    progress: &Progress,
) -> Result<Vec<Session>> {
    match args.auth {
        AuthMode::Token => {
            let prefix = args.user_prefix.clone().unwrap_or_else(run_prefix);
            let names: Vec<String> = (0..args.users).map(|i| format!("{prefix}{i}")).collect();
            let bar = progress.bar("creating users", names.len() as u64);
            let sessions = stream::iter(names)
                .map(|name| {
                    let bar = bar.clone();
                    async move {
                        let session = register_and_login(args, http, name).await;
                        bar.inc(1);
                        session
                    }
                })
                .buffered(args.setup_concurrency)
                .try_collect()
                .await;
            bar.finish_and_clear();
            sessions
        }
        AuthMode::Original => {
            if let Some(path) = &args.cookie_file {
                let lines = read_lines(path)?;
                parse_cookie_lines(&lines, args)
            } else if let Some(path) = &args.login_users {
                let lines = read_lines(path)?;
                let users = parse_login_lines(&lines, &args.password)?;
                let bar = progress.bar("logging in", users.len() as u64);
                let sessions = stream::iter(users)
                    .map(|(name, password)| {
                        let bar = bar.clone();
                        async move {
                            let session = form_login(args, http, name, &password).await;
                            bar.inc(1);
                            session
                        }
                    })
                    .buffered(args.setup_concurrency)
                    .try_collect()
                    .await;
                bar.finish_and_clear();
                sessions
            } else {
                Err(Error::Usage(
                    "--auth original needs --cookie-file or --login-users".into(),
                ))
            }
        }
    }
}

async fn register_and_login(args: &Args, http: &reqwest::Client, username: String) -> Result<Session> {
    let body = Credentials {
        username: &username,
        password: &args.password,
    };
    let base = args.base_url();
    let register = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::setup(format!("register {username}"), e))?;
    expect_status(register, 201, &format!("register {username}")).await?;
    let login = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::setup(format!("log in {username}"), e))?;
    let login = expect_status(login, 200, &format!("log in {username}")).await?;
    #[derive(serde::Deserialize)]
    struct LoggedIn {
        token: String,
    }
    let token = serde_json::from_slice::<LoggedIn>(&login)
        .map_err(|e| Error::setup(format!("log in {username}: answer without a token"), e))?
        .token;
    let value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| Error::setup(format!("log in {username}: unusable token"), e))?;
    Ok(Session {
        username,
        credential: Credential::Bearer(value),
    })
}

async fn expect_status(response: reqwest::Response, want: u16, what: &str) -> Result<Vec<u8>> {
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| Error::setup(what.to_owned(), e))?;
    if status != want {
        // chatcore limits registrations and logins per client address; one load generator
        // creating hundreds of users is one address.
        let hint = if status == 429 {
            " (run the server with --registrations-per-hour 0 --logins-per-minute 0)"
        } else {
            ""
        };
        return Err(Error::Setup {
            what: format!(
                "{what}: status {status}, expected {want}: {}{hint}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            source: None,
        });
    }
    Ok(body.to_vec())
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::setup(format!("read {}", path.display()), e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// A CSRF secret of our own: Django's CSRF check is double-submit (the header must match the
/// cookie), so a client may choose the value as long as it has the right form (64 letters
/// and digits).
fn csrf_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 64)
}

fn cookie_session(args: &Args, username: String, session_id: &str, csrf: &str) -> Result<Session> {
    let header = |text: String| {
        HeaderValue::try_from(text)
            .map_err(|e| Error::setup(format!("cookie of {username}: not a valid header"), e))
    };
    let cookie = header(format!(
        "{}={session_id}; {}={csrf}",
        args.session_cookie, args.csrf_cookie
    ))?;
    let csrf = header(csrf.to_owned())?;
    Ok(Session {
        username: username.clone(),
        credential: Credential::Cookie { cookie, csrf },
    })
}

/// Reads `username=SESSIONID` lines into sessions.
pub(crate) fn parse_cookie_lines(lines: &[String], args: &Args) -> Result<Vec<Session>> {
    let sessions: Vec<Session> = lines
        .iter()
        .map(|line| {
            let (user, session_id) = line
                .split_once('=')
                .map(|(u, s)| (u.trim(), s.trim()))
                .filter(|(u, s)| !u.is_empty() && !s.is_empty())
                .ok_or_else(|| {
                    Error::Usage(format!("cookie file line {line:?} is not username=SESSIONID"))
                })?;
            cookie_session(args, user.to_owned(), session_id, &csrf_secret())
        })
        .collect::<Result<_>>()?;
    if sessions.is_empty() {
        return Err(Error::Usage("the cookie file names no user".into()));
    }
    Ok(sessions)
}

/// Reads `username:password` (or bare `username`) lines.
pub(crate) fn parse_login_lines(lines: &[String], default_password: &str) -> Result<Vec<(String, String)>> {
    let users: Vec<(String, String)> = lines
        .iter()
        .map(|line| match line.split_once(':') {
            Some((user, password)) if !user.trim().is_empty() => {
                Ok((user.trim().to_owned(), password.to_owned()))
            }
            Some(_) => Err(Error::Usage(format!("login users line {line:?} has no username"))),
            None => Ok((line.clone(), default_password.to_owned())),
        })
        .collect::<Result<_>>()?;
    if users.is_empty() {
        return Err(Error::Usage("the login users file names no user".into()));
    }
    Ok(users)
}

/// The value of cookie `name` among `Set-Cookie` headers.
fn set_cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// The `csrfmiddlewaretoken` hidden input of a Django form page.
fn form_csrf_token(html: &str) -> Option<String> {
    let at = html.find("name=\"csrfmiddlewaretoken\"")?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let value = tag.split("value=\"").nth(1)?;
    Some(value.split('"').next()?.to_owned())
}

/// Logs in through a Django login form: GET it (CSRF cookie and form token), POST the
/// credentials, keep the session cookie of the redirect.
async fn form_login(
    args: &Args,
    http: &reqwest::Client,
    username: String,
    password: &str,
) -> Result<Session> {
    let url = format!("{}{}", args.base_url(), args.login_url);
    let what = format!("log in {username} at {url}");
    let page = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Error::setup(what.clone(), e))?;
    let csrf_cookie = set_cookie_value(page.headers(), &args.csrf_cookie);
    let html = page.text().await.map_err(|e| Error::setup(what.clone(), e))?;
    let form_token = form_csrf_token(&html);
    let (Some(csrf_cookie), Some(form_token)) = (csrf_cookie, form_token) else {
        return Err(Error::Setup {
            what: format!(
                "{what}: the login page set no {} cookie or has no csrfmiddlewaretoken",
                args.csrf_cookie
            ),
            source: None,
        });
    };
    let answer = http
        .post(&url)
        .header(COOKIE, format!("{}={csrf_cookie}", args.csrf_cookie))
        .header(http::header::REFERER, &url)
        .form(&[
            ("username", username.as_str()),
            ("password", password),
            ("csrfmiddlewaretoken", form_token.as_str()),
        ])
        .send()
        .await
        .map_err(|e| Error::setup(what.clone(), e))?;
    let status = answer.status();
    let csrf = set_cookie_value(answer.headers(), &args.csrf_cookie).unwrap_or(csrf_cookie);
    let Some(session_id) = set_cookie_value(answer.headers(), &args.session_cookie) else {
        return Err(Error::Setup {
            what: format!(
                "{what}: status {status} without a {} cookie (wrong password?)",
                args.session_cookie
            ),
            source: None,
        });
    };
    cookie_session(args, username, &session_id, &csrf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn original_args() -> Args {
        Args::parse_from(["chat-loadgen", "--auth", "original", "--cookie-file", "x"])
    }

    #[test]
    fn prefixes_are_valid_usernames_and_differ() {
        let (a, b) = (run_prefix(), run_prefix());
        assert_ne!(a, b);
        assert_eq!(a.len(), 13);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert!(a.chars().all(is_username_char));
        assert!(format!("{a}9999").len() <= 150);
    }

    #[test]
    fn cookie_lines() {
        let args = original_args();
        let lines = vec!["alice=abc123".to_owned(), "bob = def456 ".to_owned()];
        let sessions = parse_cookie_lines(&lines, &args).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[1].username, "bob");
        let headers = sessions[0].headers();
        let cookie = headers
            .iter()
            .find(|(k, _)| k == COOKIE)
            .unwrap()
            .1
            .to_str()
            .unwrap();
        let csrf = headers
            .iter()
            .find(|(k, _)| k == CSRF_HEADER)
            .unwrap()
            .1
            .to_str()
            .unwrap();
        assert!(cookie.starts_with("sessionid=abc123; csrftoken="), "{cookie}");
        assert!(cookie.ends_with(csrf));
        assert_eq!(csrf.len(), 64);
        assert!(csrf.chars().all(|c| c.is_ascii_alphanumeric()));
        for bad in ["alice", "=x", "alice=", "a=b\nc"] {
            assert!(parse_cookie_lines(&[bad.to_owned()], &args).is_err(), "{bad:?}");
        }
        assert!(parse_cookie_lines(&[], &args).is_err());
    }

    #[test]
    fn login_lines() {
        let lines = vec!["alice:s3cret:x".to_owned(), "bob".to_owned()];
        let users = parse_login_lines(&lines, "default-pw").unwrap();
        assert_eq!(users[0], ("alice".to_owned(), "s3cret:x".to_owned()));
        assert_eq!(users[1], ("bob".to_owned(), "default-pw".to_owned()));
        assert!(parse_login_lines(&[":pw".to_owned()], "x").is_err());
    }

    #[test]
    fn django_login_page_bits() {
        let html = r#"<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="TOKEN123"><input name="username"></form>"#;
        assert_eq!(form_csrf_token(html).as_deref(), Some("TOKEN123"));
        let html = r#"<input value="T2" type="hidden" name="csrfmiddlewaretoken">"#;
        assert_eq!(form_csrf_token(html).as_deref(), Some("T2"));
        assert_eq!(form_csrf_token("<form></form>"), None);
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::SET_COOKIE,
            HeaderValue::from_static("csrftoken=abc; Path=/; SameSite=Lax"),
        );
        headers.append(
            http::header::SET_COOKIE,
            HeaderValue::from_static("sessionid=s1; HttpOnly"),
        );
        assert_eq!(set_cookie_value(&headers, "sessionid").as_deref(), Some("s1"));
        assert_eq!(set_cookie_value(&headers, "csrftoken").as_deref(), Some("abc"));
        assert_eq!(set_cookie_value(&headers, "other"), None);
    }
}
