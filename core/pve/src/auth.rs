//! Credentials, login tickets, the header set per method (CSRF only on writes), the login answer
//! (a failed login answers `data: null`), and the injectable [`Clock`] that decides when a ticket is
//! renewed (tickets expire after 2 hours).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderName, HeaderValue};
use serde_json::Value;

use crate::{PveError, Secret};

/// How the client proves who it is to PVE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// An API token (preferred): header `Authorization: PVEAPIToken=<id>=<secret>` on every call,
    /// no cookie, no CSRF token. `id` is `user@realm!tokenid`.
    Token {
        /// `user@realm!tokenid`, e.g. `root@pam!portal`.
        id: String,
        /// The token's secret (a UUID).
        secret: Secret,
    },
    /// User and password: `POST /access/ticket` gives a ticket (2 h lifetime) and a CSRF token.
    /// The ticket goes in `Cookie: PVEAuthCookie=…` on every call, the CSRF token in the
    /// `CSRFPreventionToken` header on writes only. The client renews the ticket after about an hour.
    Password {
        /// `user@realm`, e.g. `labuser@pve`.
        user: String,
        /// The password.
        password: Secret,
    },
}

impl Auth {
    /// The identity shown in errors and logs: the token ID or `user@realm` (never a secret).
    pub fn userid(&self) -> &str {
        match self {
            Auth::Token { id, .. } => id,
            Auth::Password { user, .. } => user,
        }
    }
}

/// A source of monotonic time, so tests can move a ticket's age forward (tickets expire after 2 hours).
/// Production uses [`SystemClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it. For tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at "now".
    pub fn new() -> Self {
        ManualClock {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut off = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *off += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A PVE login ticket with its CSRF token and when it was obtained (by the client's [`Clock`]).
#[derive(Clone, Debug)]
pub(crate) struct Ticket {
    pub(crate) ticket: Secret,
    pub(crate) csrf: Secret,
    pub(crate) obtained: Instant,
    /// Increases with every new ticket, so concurrent 401s trigger one re-login only.
    pub(crate) generation: u64,
}

/// What goes on one request.
#[derive(Clone, Debug)]
pub(crate) enum Credentials {
    /// API token.
    Token { id: String, secret: Secret },
    /// Login ticket.
    Ticket(Ticket),
    /// Nothing (the login call itself).
    Anonymous,
}

fn sensitive(value: String, what: &str) -> Result<HeaderValue, PveError> {
    let mut v = HeaderValue::try_from(value).map_err(|_| {
        PveError::Config(format!(
            "{what} contains characters not allowed in an HTTP header"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The authentication headers for one request (the CSRF header only on writes): a token header on every
/// method; a ticket cookie on every method plus `CSRFPreventionToken` on anything but GET/HEAD; nothing
/// anonymous.
pub(crate) fn auth_headers(
    creds: &Credentials,
    method: &Method,
) -> Result<Vec<(HeaderName, HeaderValue)>, PveError> {
    Ok(match creds {
        Credentials::Anonymous => Vec::new(),
        Credentials::Token { id, secret } => vec![(
            AUTHORIZATION,
            sensitive(format!("PVEAPIToken={id}={}", secret.expose()), "the API token")?,
        )],
        Credentials::Ticket(t) => {
            let mut h = vec![(
                COOKIE,
                sensitive(format!("PVEAuthCookie={}", t.ticket.expose()), "the ticket")?,
            )];
            if *method != Method::GET && *method != Method::HEAD {
                h.push((
                    HeaderName::from_static("csrfpreventiontoken"),
                    sensitive(t.csrf.expose().to_owned(), "the CSRF token")?,
                ));
            }
            h
        }
    })
}

/// What a successful `POST /access/ticket` gave.
#[derive(Debug)]
pub(crate) struct LoginAnswer {
    pub(crate) ticket: Secret,
    pub(crate) csrf: Secret,
    pub(crate) username: String,
}

/// Reads the answer of `POST /access/ticket` (a failed login answers `data: null`): 401 →
/// `InvalidCredentials` naming `userid`; 200 without `data.ticket` (or `data: null`) → `MalformedResponse`; a
/// TFA challenge → `Config`.
/// `body` is the parsed JSON body, or `Value::Null` when it was not JSON.
pub(crate) fn parse_login(status: u16, body: &Value, userid: &str) -> Result<LoginAnswer, PveError> {
    if status == 401 {
        return Err(PveError::InvalidCredentials {
            userid: userid.to_owned(),
        });
    }
    if !(200..300).contains(&status) {
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("login failed");
        return Err(crate::error::classify(status, message));
    }
    let data = body.get("data").filter(|d| d.is_object()).ok_or_else(|| {
        PveError::MalformedResponse(format!("login for {userid}: answer has no data object"))
    })?;
    if data.get("NeedTFA").and_then(crate::de::bool_of).unwrap_or(false) {
        return Err(PveError::Config(format!(
            "{userid} must pass two-factor authentication, which this client does not do; use an API token"
        )));
    }
    let ticket = data
        .get("ticket")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PveError::MalformedResponse(format!("login for {userid}: answer has no ticket")))?;
    let csrf = data
        .get("CSRFPreventionToken")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            PveError::MalformedResponse(format!("login for {userid}: answer has no CSRFPreventionToken"))
        })?;
    let username = data
        .get("username")
        .and_then(Value::as_str)
        .unwrap_or(userid)
        .to_owned();
    Ok(LoginAnswer {
        ticket: Secret::new(ticket),
        csrf: Secret::new(csrf),
        username,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csrf_login_ticket() -> Credentials {
        let answer = parse_login(
            200,
            &json!({"data":{"ticket":"PVE:labuser@pve:00000000::FAKE","CSRFPreventionToken":"00000000:FAKECSRF","username":"labuser@pve"}}),
            "labuser@pve",
        )
        .unwrap();
        Credentials::Ticket(Ticket {
            ticket: answer.ticket,
            csrf: answer.csrf,
            obtained: Instant::now(),
            generation: 1,
        })
    }

    fn names_and_values(h: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn ticket_get_sends_cookie_only() {
        let h = auth_headers(&csrf_login_ticket(), &Method::GET).unwrap();
        assert_eq!(
            names_and_values(&h),
            [(
                "cookie".into(),
                "PVEAuthCookie=PVE:labuser@pve:00000000::FAKE".into()
            )]
        );
    }

    #[test]
    fn ticket_writes_send_cookie_and_csrf() {
        for m in [Method::POST, Method::PUT, Method::DELETE] {
            let h = auth_headers(&csrf_login_ticket(), &m).unwrap();
            assert_eq!(
                names_and_values(&h),
                [
                    (
                        "cookie".into(),
                        "PVEAuthCookie=PVE:labuser@pve:00000000::FAKE".into()
                    ),
                    ("csrfpreventiontoken".into(), "00000000:FAKECSRF".into()),
                ],
                "{m}"
            );
        }
    }

    #[test]
    fn token_sends_authorization_only_on_every_method() {
        let creds = Credentials::Token {
            id: "root@pam!portal".into(),
            secret: Secret::new("00000000-fake"),
        };
        for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let h = auth_headers(&creds, &m).unwrap();
            assert_eq!(
                names_and_values(&h),
                [(
                    "authorization".into(),
                    "PVEAPIToken=root@pam!portal=00000000-fake".into()
                )],
                "{m}"
            );
        }
    }

    #[test]
    fn auth_headers_are_marked_sensitive() {
        for (_, v) in auth_headers(&csrf_login_ticket(), &Method::POST).unwrap() {
            assert!(v.is_sensitive());
        }
    }

    #[test]
    fn secret_with_newline_is_refused_not_sent() {
        let creds = Credentials::Token {
            id: "a@pam!t".into(),
            secret: Secret::new("x\r\nX-Evil: 1"),
        };
        assert!(matches!(
            auth_headers(&creds, &Method::GET),
            Err(PveError::Config(_))
        ));
    }

    #[test]
    fn failed_login_with_null_data_is_invalid_credentials_naming_the_user() {
        // A failed login: 401 with {"data":null}.
        let e = parse_login(401, &json!({"data": null}), "labuser@pve").unwrap_err();
        match e {
            PveError::InvalidCredentials { userid } => assert_eq!(userid, "labuser@pve"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_200_without_ticket_is_malformed_not_a_panic() {
        for body in [
            json!({"data": null}),
            json!({"data": {"username": "labuser@pve"}}),
            Value::Null,
        ] {
            let e = parse_login(200, &body, "labuser@pve").unwrap_err();
            assert!(matches!(e, PveError::MalformedResponse(_)), "{body} → {e:?}");
        }
    }

    #[test]
    fn login_asking_for_tfa_is_a_config_error() {
        let e = parse_login(
            200,
            &json!({"data":{"ticket":"PVE:!tfa!x","NeedTFA":1,"username":"u@pve"}}),
            "u@pve",
        )
        .unwrap_err();
        assert!(matches!(e, PveError::Config(_)), "{e:?}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(6900));
        assert_eq!(c.now().duration_since(t0), Duration::from_secs(6900));
    }
}
