//! `dockscale rollout status|pause|resume|abort|retry|history NAME`: a service's
//! rollout through a running controller's HTTP API (`/api/v1/services/NAME/rollout`,
//! `.../rollout/history`, `POST .../rollout/{command}`), like `kubectl rollout`.
//!
//! The commands send the API token when one is given (`--token-file`, else the
//! environment's `DOCKSCALE_API_TOKEN`). Rendering is pure and tested here; only
//! [`run`] talks to the controller.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::status_cli::Output;

/// What `dockscale rollout` is asked.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RolloutAction {
    /// Where the service's rollout stands: strategy, step, weight, the step's figures
    /// and verdict so far, paused or aborted.
    Status(Target),
    /// Hold the canary's current step (its analysis goes on) until resumed.
    Pause(Target),
    /// Let a paused canary go on.
    Resume(Target),
    /// Abort the canary as a failed analysis would: the old replicas take all the
    /// traffic back, the new ones are drained and removed.
    Abort(Target),
    /// Roll the aborted template out again, from its first step.
    Retry(Target),
    /// The service's last 10 rollouts with their outcome and each step's figures.
    History(Target),
}

/// The service and the controller.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The service (`metadata.name`).
    pub name: String,
    /// Address of the controller's HTTP server (its --listen).
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub addr: SocketAddr,
    /// A file holding the API token (the controller's --api-token-file). Default: the
    /// DOCKSCALE_API_TOKEN environment variable, else none.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(
        "cannot reach dockscale at http://{addr} \
         (is `dockscale run` running with --listen {addr}?)"
    )]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read the token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The controller's own words (404, 409, 401, 403).
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from http://{addr}{path}: {message}")]
    Answer {
        addr: SocketAddr,
        path: String,
        message: String,
    },
}

/// Runs the action; the text to print.
pub async fn run(action: &RolloutAction) -> Result<String, RolloutError> {
    let (target, command) = match action {
        RolloutAction::Status(t) | RolloutAction::History(t) => (t, None),
        RolloutAction::Pause(t) => (t, Some("pause")),
        RolloutAction::Resume(t) => (t, Some("resume")),
        RolloutAction::Abort(t) => (t, Some("abort")),
        RolloutAction::Retry(t) => (t, Some("retry")),
    };
    let addr = target.addr;
    let path = match (action, command) {
        (_, Some(c)) => format!("/api/v1/services/{}/rollout/{c}", target.name),
        (RolloutAction::History(_), None) => {
            format!("/api/v1/services/{}/rollout/history", target.name)
        }
        _ => format!("/api/v1/services/{}/rollout", target.name),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|source| RolloutError::Unreachable { addr, source })?;
    let url = format!("http://{addr}{path}");
    let request = match command {
        Some(_) => {
            let request = client.post(&url);
            match token(target)? {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        }
        None => client.get(&url),
    };
    let response = request
        .send()
        .await
        .map_err(|source| RolloutError::Unreachable { addr, source })?;
    let code = response.status();
    let answer = |message: String| RolloutError::Answer {
        addr,
        path: path.clone(),
        message,
    };
    let body: Value = response
        .json()
        .await
        .map_err(|e| answer(format!("HTTP {code}: {e}")))?;
    if !code.is_success() {
        return Err(match body["error"].as_str() {
            Some(message) => RolloutError::Refused(message.to_owned()),
            None => answer(format!("HTTP {code}")),
        });
    }
    Ok(match (target.output, action) {
        (Output::Json, _) => {
            let mut text =
                serde_json::to_string_pretty(&body).map_err(|e| answer(e.to_string()))?;
            text.push('\n');
            text
        }
        (Output::Table, RolloutAction::Status(_)) => describe(&body),
        (Output::Table, RolloutAction::History(_)) => history(&body),
        (Output::Table, _) => format!("{}\n", body["message"].as_str().unwrap_or("done")),
    })
}

/// The token to send: the file's content (trimmed), else the environment's.
fn token(target: &Target) -> Result<Option<String>, RolloutError> {
    match &target.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|source| RolloutError::TokenFile {
                path: path.clone(),
                source,
            }),
        None => Ok(std::env::var("DOCKSCALE_API_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `0.3%`, from a ratio.
fn percent(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}ms"))
}

/// One step's figures on one line.
fn figures(step: &Value) -> String {
    format!(
        "{} requests old/new {}/{}, errors {}/{}, response time {}/{}",
        text(&step["verdict"]),
        text(&step["requests"]["old"]),
        text(&step["requests"]["new"]),
        percent(&step["errorRatio"]["old"]),
        percent(&step["errorRatio"]["new"]),
        millis(&step["responseTimeMillis"]["old"]),
        millis(&step["responseTimeMillis"]["new"]),
    )
}

/// `dockscale rollout status NAME`.
pub fn describe(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Service:   {}", text(&r["service"]));
    let _ = writeln!(out, "Template:  {}", text(&r["templateHash"]));
    let _ = writeln!(out, "Strategy:  {}", text(&r["strategy"]));
    let mut state = text(&r["state"]);
    if let Some(secs) = r["pausedForSeconds"].as_f64() {
        let _ = write!(state, " for {secs:.0}s");
    }
    let _ = writeln!(out, "State:     {state}");
    // A rolling update guarded by the analysis goes by batches, at their natural share.
    let rolling = r["strategy"] == "rolling";
    let stage = if rolling { "batch" } else { "step" };
    match r["step"].as_u64() {
        Some(batch) if rolling => {
            let _ = writeln!(out, "Batch:     {batch} (watched by the analysis)");
        }
        Some(step) => {
            let _ = writeln!(
                out,
                "Step:      {step} of {} ({}% of the traffic)",
                text(&r["steps"]),
                text(&r["weight"])
            );
        }
        None => {}
    }
    let a = &r["analysis"];
    if a.is_object() {
        let _ = writeln!(
            out,
            "Analysis:  {stage} {} after {:.1}s: {}",
            text(&a["step"]),
            a["elapsedSeconds"].as_f64().unwrap_or(0.0),
            figures(a)
        );
    }
    if r["aborted"].is_object() {
        let _ = writeln!(
            out,
            "Aborted:   {}: {}",
            text(&r["aborted"]["templateHash"]),
            text(&r["aborted"]["message"])
        );
    }
    out
}

/// `dockscale rollout history NAME`: one block per revision, newest first.
pub fn history(h: &Value) -> String {
    let revisions = h["revisions"].as_array().cloned().unwrap_or_default();
    if revisions.is_empty() {
        return format!("{}: no rollout recorded\n", text(&h["service"]));
    }
    let mut out = String::new();
    for (i, r) in revisions.iter().enumerate().rev() {
        let outcome = match &r["outcome"] {
            Value::Null => "under way".to_owned(),
            o => text(o),
        };
        let _ = writeln!(
            out,
            "REVISION {}  {}  {}  {}  {outcome}  started {}  finished {}",
            i + 1,
            text(&r["templateHash"]),
            text(&r["image"]),
            text(&r["strategy"]),
            text(&r["started"]),
            text(&r["finished"]),
        );
        if let Some(message) = r["message"].as_str() {
            let _ = writeln!(out, "  {message}");
        }
        for s in r["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  step {} ({}%): {}",
                text(&s["step"]),
                text(&s["weight"]),
                figures(s)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Value {
        serde_json::json!({
            "step": 1, "weight": 25, "verdict": "hold", "elapsedSeconds": 4.2,
            "requests": {"old": 900, "new": 300},
            "errorRatio": {"old": 0.001, "new": 0.0},
            "responseTimeMillis": {"old": 1.0, "new": 2.4},
        })
    }

    #[test]
    fn status_shows_the_step_its_figures_and_a_pause() {
        let r = serde_json::json!({
            "service": "web", "templateHash": "abc", "strategy": "canary",
            "state": "paused", "pausedForSeconds": 12.3, "step": 1, "steps": 2,
            "weight": 25, "paused": true, "analysis": step(), "aborted": null,
        });
        let text = describe(&r);
        assert!(text.contains("State:     paused for 12s"), "{text}");
        assert!(
            text.contains("Step:      1 of 2 (25% of the traffic)"),
            "{text}"
        );
        assert!(
            text.contains(
                "step 1 after 4.2s: hold requests old/new 900/300, errors 0.1%/0.0%, \
                 response time 1ms/2ms"
            ),
            "{text}"
        );
        assert!(!text.contains("Aborted"));
    }

    #[test]
    fn status_of_a_guarded_rolling_update_shows_its_batch() {
        let r = serde_json::json!({
            "service": "web", "templateHash": "abc", "strategy": "rolling",
            "state": "progressing", "step": 2, "steps": 0, "weight": null,
            "paused": false, "analysis": step(), "aborted": null,
        });
        let text = describe(&r);
        assert!(
            text.contains("Batch:     2 (watched by the analysis)"),
            "{text}"
        );
        assert!(!text.contains("Step:"), "{text}");
        assert!(
            text.contains("Analysis:  batch 1 after 4.2s: hold"),
            "{text}"
        );
    }

    #[test]
    fn history_lists_the_newest_first_with_outcomes_and_steps() {
        let h = serde_json::json!({"service": "web", "revisions": [
            {"templateHash": "a1", "image": "w:1", "strategy": "canary",
             "started": "2026-01-01T00:00:00.000Z", "finished": "2026-01-01T00:00:09.000Z",
             "outcome": "promoted", "steps": [step()]},
            {"templateHash": "b2", "image": "w:2", "strategy": "canary",
             "started": "2026-01-02T00:00:00.000Z", "finished": null,
             "outcome": null, "steps": []},
        ]});
        let text = history(&h);
        let b2 = text.find("REVISION 2  b2").expect("second revision");
        let a1 = text.find("REVISION 1  a1").expect("first revision");
        assert!(b2 < a1, "newest first: {text}");
        assert!(text.contains("under way"), "{text}");
        assert!(text.contains("promoted"), "{text}");
        assert!(text.contains("  step 1 (25%): hold requests"), "{text}");
        assert_eq!(
            history(&serde_json::json!({"service": "web", "revisions": []})),
            "web: no rollout recorded\n"
        );
    }

    #[test]
    fn odd_json_renders_without_panicking() {
        for v in [serde_json::json!({}), serde_json::json!([1]), Value::Null] {
            let _ = describe(&v);
            let _ = history(&v);
        }
    }
}
