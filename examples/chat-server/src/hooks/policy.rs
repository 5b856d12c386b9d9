//! `--policy-url`: a [`chatcore::SendPolicy`] that asks an HTTP endpoint about each send, so
//! the library's deadline (`--policy-timeout-ms`) and fallback (`--policy-fallback`) apply.

use std::time::Instant;

use async_trait::async_trait;
use chatcore::{BoxError, Draft, Rejection, SendPolicy, Verdict};
use metrics::{Counter, Histogram, counter, histogram};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{Signer, names, read_limited};

/// Most bytes of a policy's answer that are read; a longer answer is a bad answer.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Asks `POST <url>` with `{"sender","recipient","body"}` (signed like the webhooks when a
/// secret is configured) and reads the verdict:
///
/// - `{"action":"allow"}`: the message is stored as it is;
/// - `{"action":"reject","reason":"...","status":403|422}`: refused; the sender gets that
///   status with `{"error": reason}` (`status` defaults to 403, `reason` to a generic text);
/// - `{"action":"rewrite","body":"..."}`: this body is stored instead (checked again like
///   any message body: a bad one fails the send with 400).
///
/// Anything else (unreachable, a status other than 2xx, another JSON, another status in a
/// rejection) is an error: the fallback decides, and it is counted.
pub struct HttpPolicy {
    client: reqwest::Client,
    url: Url,
    signer: Option<Signer>,
    metrics: PolicyMetrics,
}

impl std::fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

impl HttpPolicy {
    /// A policy at `url`, asked with `client`, signing with `signer` if any.
    pub fn new(client: reqwest::Client, url: Url, signer: Option<Signer>) -> Self {
        Self {
            client,
            url,
            signer,
            metrics: PolicyMetrics::new(),
        }
    }

    async fn ask(&self, draft: &Draft<'_>) -> Result<Verdict, (Outcome, BoxError)> {
        let question = serde_json::to_vec(&Question {
            sender: draft.sender.username.as_str(),
            recipient: draft.recipient.as_str(),
            body: draft.body,
        })
        .map_err(|error| (Outcome::Failed, error.into()))?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            for (name, value) in signer.headers(&question) {
                request = request.header(name, value);
            }
        }
        let failed = |error: reqwest::Error| (Outcome::Failed, BoxError::from(error));
        let response = request.body(question).send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err((Outcome::Failed, format!("the policy answered {status}").into()));
        }
        let answer = read_limited(response, ANSWER_LIMIT + 1).await.map_err(failed)?;
        if answer.len() > ANSWER_LIMIT {
            return Err((
                Outcome::BadAnswer,
                format!("the policy's answer is longer than {ANSWER_LIMIT} bytes").into(),
            ));
        }
        let bad = |error: String| (Outcome::BadAnswer, BoxError::from(error));
        let answer: Answer = serde_json::from_slice(&answer).map_err(|error| {
            bad(format!(
                "the policy's answer is none of allow, reject, rewrite ({error}): {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        })?;
        Ok(match answer {
            Answer::Allow => Verdict::Allow,
            Answer::Rewrite { body } => Verdict::Rewrite(body),
            Answer::Reject { reason, status } => {
                let reason = reason
                    .filter(|reason| !reason.trim().is_empty())
                    .unwrap_or_else(|| "the message was refused".to_owned());
                match status {
                    None | Some(403) => Verdict::Reject(Rejection::forbidden(reason)),
                    Some(422) => Verdict::Reject(Rejection::unprocessable(reason)),
                    Some(other) => {
                        return Err(bad(format!(
                            "the policy rejected with status {other}: only 403 and 422 are allowed"
                        )));
                    }
                }
            }
        })
    }
}

/// A policy that allows every message, in process (`--bench-allow-all-policy`): what the
/// policy hook costs a send without any work of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl SendPolicy for AllowAll {
    async fn check(&self, _draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        Ok(Verdict::Allow)
    }
}

#[async_trait]
impl SendPolicy for HttpPolicy {
    async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        // Counts the call as timed out if the service drops it at its deadline.
        let mut call = Call {
            metrics: &self.metrics,
            started: Instant::now(),
            outcome: None,
        };
        let result = self.ask(draft).await;
        call.outcome = Some(match &result {
            Ok(Verdict::Allow) => Outcome::Allow,
            Ok(Verdict::Reject(_)) => Outcome::Reject,
            Ok(Verdict::Rewrite(_)) => Outcome::Rewrite,
            Err((outcome, _)) => *outcome,
        });
        result.map_err(|(_, error)| error)
    }
}

/// What the policy is asked.
#[derive(Serialize)]
struct Question<'a> {
    sender: &'a str,
    recipient: &'a str,
    body: &'a str,
}

/// What the policy may answer.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        status: Option<u16>,
    },
    Rewrite {
        body: String,
    },
}

/// How a call ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allow,
    Reject,
    Rewrite,
    /// Unreachable, or a status other than 2xx.
    Failed,
    /// 2xx with something else than one of the three answers.
    BadAnswer,
    /// The service's deadline passed first.
    TimedOut,
}

struct PolicyMetrics {
    outcomes: [Counter; 6],
    seconds: Histogram,
}

impl PolicyMetrics {
    fn new() -> Self {
        let outcome = |label: &'static str| counter!(names::POLICY_CALLS_TOTAL, "outcome" => label);
        Self {
            outcomes: [
                outcome("allow"),
                outcome("reject"),
                outcome("rewrite"),
                outcome("failed"),
                outcome("bad_answer"),
                outcome("timed_out"),
            ],
            seconds: histogram!(names::POLICY_CALL_SECONDS),
        }
    }
}

/// One call, counted when it ends: with its outcome, or as timed out when it is dropped
/// before it has one (the service's deadline passed).
struct Call<'a> {
    metrics: &'a PolicyMetrics,
    started: Instant,
    outcome: Option<Outcome>,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::TimedOut);
        self.metrics.outcomes[outcome as usize].increment(1);
        if outcome != Outcome::TimedOut {
            self.metrics.seconds.record(self.started.elapsed().as_secs_f64());
        }
    }
}
