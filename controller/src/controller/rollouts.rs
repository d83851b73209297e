//! The loop's side of rollout control and history: the commands the HTTP server
//! enqueues ([`CommandRequest`]) applied through the pure
//! [`crate::reconcile::control::apply`] and answered, each pass's rollout recorded in
//! the service's [`History`] (pure, [`History::record`]), the history file read at
//! start and written when it changed (off the loop, by the [`HistoryWriter`]), and
//! where the rollout stands published for the status API.
//!
//! The history of a service lives in `<state-dir>/rollouts/<service>.json`, written
//! atomically (a temporary file in the same directory, renamed over it). A file that
//! cannot be read or parsed is a warning: the service starts with an empty history.

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::controller::services::Entry;
use crate::controller::Controller;
use crate::lb::LoadBalancer;
use crate::reconcile::canary::Verdict;
use crate::reconcile::control::{self, RolloutCommand};
use crate::reconcile::history::{Change, History, PassFacts, StepRecord};
use crate::reconcile::{Note, Plan};
use crate::runtime::ContainerRuntime;
use crate::serve::status::{AbortedRollout, EventType, RolloutStatus};
use crate::spec::Strategy;

/// A command for a service's rollout, with where to send the outcome.
#[derive(Debug)]
pub struct CommandRequest {
    pub service: String,
    pub command: RolloutCommand,
    pub reply: oneshot::Sender<CommandReply>,
}

/// The outcome of a [`CommandRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum CommandReply {
    /// Applied: the planner acts on it in the pass that follows at once.
    Applied(String),
    /// It does not apply to where the rollout stands.
    Refused(String),
    /// No service of that name.
    NotFound,
}

/// Where the HTTP server sends commands.
pub type CommandSender = mpsc::Sender<CommandRequest>;

/// The directory of the services' history files under a state directory.
pub fn history_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("rollouts")
}

/// Reads a service's history; a missing file is an empty history, an unreadable or
/// bad one a warning and an empty history (never a failed start).
pub fn load_history(dir: &Path, service: &str) -> History {
    let path = dir.join(format!("{service}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return History::default(),
        Err(e) => {
            tracing::warn!(
                service,
                path = %path.display(),
                error = %e,
                "cannot read the rollout history; starting with an empty one"
            );
            return History::default();
        }
    };
    match serde_json::from_str::<History>(&text) {
        Ok(mut history) => {
            while history.revisions.len() > crate::reconcile::history::MAX_REVISIONS {
                history.revisions.pop_front();
            }
            history
        }
        Err(e) => {
            tracing::warn!(
                service,
                path = %path.display(),
                "the rollout history does not parse ({e}, at line {} column {}); starting \
                 with an empty one (the file is replaced at the next rollout)",
                e.line(),
                e.column()
            );
            History::default()
        }
    }
}

/// Writes a service's history atomically: a temporary file in `dir`, flushed to disk,
/// renamed over the old one.
pub fn save_history(dir: &Path, service: &str, history: &History) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(history).map_err(std::io::Error::other)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&text)?;
    file.write_all(b"\n")?;
    file.as_file().sync_all()?;
    file.persist(dir.join(format!("{service}.json")))
        .map_err(|e| e.error)?;
    Ok(())
}

/// Writes the services' history files off the loop: a write (a flush to disk) never
/// holds up a pass. Writes are kept in order; of several waiting for one service only
/// the newest is written. A write that fails says why, and the history stays in
/// memory (the next change writes it again).
pub struct HistoryWriter {
    queue: mpsc::UnboundedSender<(String, History)>,
    task: tokio::task::JoinHandle<()>,
}

impl HistoryWriter {
    /// A writer into `dir`; must be started inside the runtime.
    pub fn start(dir: PathBuf) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<(String, History)>();
        let task = tokio::spawn(async move {
            while let Some((service, history)) = pending.recv().await {
                let mut newest = std::collections::BTreeMap::from([(service, history)]);
                while let Ok((service, history)) = pending.try_recv() {
                    newest.insert(service, history);
                }
                let dir = dir.clone();
                let written = tokio::task::spawn_blocking(move || {
                    for (service, history) in newest {
                        if let Err(e) = save_history(&dir, &service, &history) {
                            tracing::warn!(
                                service,
                                dir = %dir.display(),
                                error = %e,
                                "cannot write the rollout history (it is kept in memory)"
                            );
                        }
                    }
                })
                .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "the rollout history writer failed");
                }
            }
        });
        HistoryWriter { queue, task }
    }

    /// Queues `history` to be written as `service`'s.
    pub fn keep(&self, service: &str, history: &History) {
        // The task ends only once this sender is dropped: sending cannot fail first.
        let _ = self.queue.send((service.to_owned(), history.clone()));
    }

    /// Writes what is queued, waiting up to `within`.
    pub async fn flush(self, within: std::time::Duration) {
        let HistoryWriter { queue, task } = self;
        drop(queue);
        if tokio::time::timeout(within, task).await.is_err() {
            tracing::warn!("the rollout history was still being written when dockscale stopped");
        }
    }
}

impl Entry {
    /// Its history from `dir`; an abort that was the last thing recorded of the
    /// current template holds it back again (a restarted controller does not roll an
    /// aborted template out again).
    pub(crate) fn load_history(&mut self, dir: &Path) {
        self.history = load_history(dir, self.spec.name());
        if let Some(r) = self.history.aborted(&self.template_hash) {
            tracing::info!(
                service = self.spec.name(),
                template = %r.template_hash,
                "the spec's template was aborted before the restart: held back (`dockscale \
                 rollout retry` rolls it out again)"
            );
            self.memory.aborted_template = Some(r.template_hash.clone());
            self.abort_message = r.message.clone();
        }
    }
}

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// A command from the HTTP server: applied to the service's memory by the pure
    /// state machine, or refused; answered either way, and the service woken.
    pub(super) fn on_command(&mut self, request: CommandRequest) {
        let CommandRequest {
            service,
            command,
            reply,
        } = request;
        let Some(entry) = self.services.get_mut(&service) else {
            let _ = reply.send(CommandReply::NotFound);
            return;
        };
        let now = Instant::now();
        let result = control::apply(
            command,
            &mut entry.memory,
            &entry.spec.spec,
            &entry.template_hash,
            now,
        );
        let outcome = match result {
            Ok(applied) => {
                if command == RolloutCommand::Retry {
                    entry.abort_message = None;
                }
                entry.wake(now);
                let wall = self.settings.clock.wall();
                let message = applied.message.clone();
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(&service) {
                        svc.record(EventType::Normal, applied.reason, message, wall);
                    }
                });
                CommandReply::Applied(applied.message)
            }
            Err(refused) => {
                tracing::info!(service, command = command.label(), "refused: {refused}");
                CommandReply::Refused(refused.0)
            }
        };
        let label = match outcome {
            CommandReply::Applied(_) => "applied",
            CommandReply::Refused(_) | CommandReply::NotFound => "refused",
        };
        self.metrics
            .rollout_commands_total
            .with_label_values(&[&service, command.label(), label])
            .inc();
        let _ = reply.send(outcome);
    }

    /// What a pass decided of the service's rollout, into its history (before the plan
    /// is applied to memory: a rolling update's completion is its change). The history
    /// is written when it changed in a way worth keeping.
    pub(super) fn record_rollout(&mut self, name: &str, plan: &Plan) {
        let Some(entry) = self.services.get_mut(name) else {
            return;
        };
        let spec = &entry.spec.spec;
        let hash = entry.template_hash.as_str();
        let strategy = spec.rollout.strategy;
        let aborted = plan.notes.iter().find_map(|n| match n {
            Note::RolloutAborted {
                template_hash,
                message,
            } if template_hash == hash => Some(message.as_str()),
            _ => None,
        });
        let analysed = plan.canary_analysis.as_ref().map(|a| (a, a.weight));
        let (under_way, promoted) = match strategy {
            Strategy::Canary => (
                plan.canary
                    .as_ref()
                    .is_some_and(|c| c.template_hash == hash && !c.promoted),
                plan.canary_analysis
                    .as_ref()
                    .is_some_and(|a| a.verdict == Verdict::Promote),
            ),
            Strategy::Rolling => {
                let was_complete = entry
                    .memory
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.template_hash == hash && r.complete);
                let now = plan.rollout.as_ref().filter(|r| r.template_hash == hash);
                (
                    now.is_some_and(|r| !r.complete),
                    now.is_some_and(|r| r.complete) && !was_complete,
                )
            }
        };
        let facts = PassFacts {
            template_hash: hash,
            image: &spec.template.image,
            strategy,
            under_way,
            promoted,
            aborted,
            analysed,
        };
        let open_before = entry
            .history
            .open()
            .map(|r| (r.template_hash.clone(), r.started));
        let change = entry.history.record(&facts, self.settings.clock.wall());
        let open_now = entry
            .history
            .open()
            .map(|r| (r.template_hash.clone(), r.started));
        if open_now.is_some() && open_now != open_before {
            // Another rollout began: the figures of the one before are not its own.
            entry.last_analysis = None;
        }
        if let Some(message) = aborted {
            entry.abort_message = Some(message.to_owned());
        }
        if plan.aborted.is_none() && entry.memory.aborted_template.is_none() {
            entry.abort_message = None;
        }
        if let Some((a, weight)) = analysed {
            entry.last_analysis = Some(StepRecord::from_analysed(a, weight));
        } else if !under_way && aborted.is_none() && plan.aborted.is_none() {
            entry.last_analysis = None;
        }
        if change == Change::Durable {
            if let Some(writer) = &self.history_writer {
                writer.keep(name, &entry.history);
            }
        }
    }

    /// Where the rollout stands after a pass (the plan applied to memory), and the
    /// history, for the status API.
    pub(super) fn publish_rollout(&self, name: &str, plan: &Plan) {
        let Some(entry) = self.services.get(name) else {
            return;
        };
        let rollout = rollout_status(entry, plan, Instant::now());
        // The template kept for an abort is the history file's, not the status's.
        let history = History {
            stable: None,
            ..entry.history.clone()
        };
        self.status.update(|s| {
            if let Some(svc) = s.services.get_mut(name) {
                svc.rollout = rollout;
                svc.history = history;
            }
        });
    }
}

/// Where a service's rollout stands after a pass.
fn rollout_status(entry: &Entry, plan: &Plan, now: Instant) -> RolloutStatus {
    let spec = &entry.spec.spec;
    let hash = entry.template_hash.clone();
    let aborted = plan
        .aborted
        .as_ref()
        .filter(|h| **h == hash)
        .map(|h| AbortedRollout {
            template_hash: h.clone(),
            message: entry.abort_message.clone().unwrap_or_default(),
        });
    let canary = plan.canary.as_ref().filter(|c| c.template_hash == hash);
    let rolling = plan
        .rollout
        .as_ref()
        .is_some_and(|r| r.template_hash == hash && !r.complete);
    let paused_since = canary.and_then(|c| c.paused_since);
    let state = match (&aborted, canary) {
        (Some(_), _) => "aborted",
        (None, Some(c)) if c.promoted => {
            if rolling {
                "promoted"
            } else {
                "settled"
            }
        }
        (None, Some(_)) if paused_since.is_some() => "paused",
        (None, Some(_)) => "progressing",
        (None, None) if rolling => "progressing",
        (None, None) => "settled",
    };
    let in_step = canary.filter(|c| !c.promoted);
    RolloutStatus {
        template_hash: hash,
        strategy: spec.rollout.strategy,
        state,
        step: in_step.map(|c| c.step + 1),
        steps: spec.rollout.steps.len(),
        weight: in_step.and_then(|c| Some(spec.rollout.steps.get(c.step)?.weight)),
        paused: paused_since.is_some(),
        paused_for_seconds: paused_since.map(|t| now.saturating_duration_since(t).as_secs_f64()),
        analysis: entry.last_analysis.clone(),
        aborted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    use crate::reconcile::history::{Outcome, PassFacts};

    fn history() -> History {
        let mut h = History::default();
        let facts = PassFacts {
            template_hash: "h2",
            image: "webapp:2",
            strategy: Strategy::Canary,
            under_way: true,
            promoted: false,
            aborted: None,
            analysed: None,
        };
        h.record(&facts, SystemTime::UNIX_EPOCH);
        h.record(
            &PassFacts {
                aborted: Some("aborted by command"),
                ..facts
            },
            SystemTime::UNIX_EPOCH,
        );
        h
    }

    #[test]
    fn a_history_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rollouts = history_dir(dir.path());
        assert_eq!(load_history(&rollouts, "web"), History::default());
        save_history(&rollouts, "web", &history()).expect("saves");
        let back = load_history(&rollouts, "web");
        assert_eq!(back, history());
        assert_eq!(back.revisions[0].outcome, Some(Outcome::Aborted));
        // Written by rename: no temporary file is left beside it.
        let files: Vec<_> = std::fs::read_dir(&rollouts)
            .expect("lists")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(files, ["web.json"]);
    }

    #[tokio::test]
    async fn the_writer_writes_the_newest_history_of_each_service_by_its_flush() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rollouts = history_dir(dir.path());
        let writer = HistoryWriter::start(rollouts.clone());
        writer.keep("web", &History::default());
        writer.keep("api", &History::default());
        writer.keep("web", &history());
        writer.flush(std::time::Duration::from_secs(10)).await;
        assert_eq!(load_history(&rollouts, "web"), history());
        assert_eq!(load_history(&rollouts, "api"), History::default());
        assert!(rollouts.join("api.json").exists());
    }

    #[tokio::test]
    async fn a_write_that_fails_leaves_the_writer_going() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A file where the directory should be: every write fails.
        let blocked = dir.path().join("rollouts");
        std::fs::write(&blocked, "").expect("writes");
        let writer = HistoryWriter::start(blocked.clone());
        writer.keep("web", &history());
        writer.keep("web", &history());
        writer.flush(std::time::Duration::from_secs(10)).await;
        assert!(blocked.is_file(), "left as it was");
    }

    #[test]
    fn a_bad_or_unreadable_history_file_starts_an_empty_history() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let rollouts = history_dir(dir.path());
        std::fs::create_dir_all(&rollouts).expect("mkdir");
        std::fs::write(
            rollouts.join("web.json"),
            "{\"revisions\": [{\"templateHash\": 3}]}",
        )
        .expect("writes");
        assert_eq!(load_history(&rollouts, "web"), History::default());
        std::fs::write(rollouts.join("web.json"), "not json").expect("writes");
        assert_eq!(load_history(&rollouts, "web"), History::default());
        // A directory where the file should be cannot be read as one.
        std::fs::create_dir_all(rollouts.join("api.json")).expect("mkdir");
        assert_eq!(load_history(&rollouts, "api"), History::default());
        // And the next save replaces the bad file.
        save_history(&rollouts, "web", &history()).expect("saves");
        assert_eq!(load_history(&rollouts, "web"), history());
    }
}
