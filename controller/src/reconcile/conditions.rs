//! A service's status after a pass, derived from the plan (its counts and notes), what
//! the controller remembers and the time, like a Deployment controller's status
//! computation. Pure: [`derive`](fn@derive) reads the previous status and returns
//! what changes; the controller applies it ([`Update::apply`]) and never decides a
//! condition itself.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::serve::status::{BackOffStatus, ConditionType, EventType, ServiceStatus};
use crate::spec::ServiceSpec;

use super::{Memory, Note, Plan};

/// What a pass's status is derived from, besides the plan.
pub struct Context<'a> {
    pub spec: &'a ServiceSpec,
    pub template_hash: &'a str,
    pub memory: &'a Memory,
    /// The last create failure (its reason and message), shown until a create succeeds.
    pub create_error: Option<(&'static str, &'a str)>,
    /// Why the load balancer could not be configured, while it cannot.
    pub lb_config_error: Option<&'a str>,
    /// The load-balancer commands of this pass that failed, in words.
    pub lb_errors: &'a [String],
    /// The desired count of the previous pass; `None` on the service's first pass.
    pub last_desired: Option<u32>,
    pub now: Instant,
    pub wall: SystemTime,
}

/// One condition as it should be now.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionValue {
    pub kind: ConditionType,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// An event to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl NewEvent {
    fn normal(reason: &'static str, message: String) -> Self {
        NewEvent {
            kind: EventType::Normal,
            reason,
            message,
        }
    }

    fn warning(reason: &'static str, message: String) -> Self {
        NewEvent {
            kind: EventType::Warning,
            reason,
            message,
        }
    }
}

/// What a pass changes in a service's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub conditions: Vec<ConditionValue>,
    pub events: Vec<NewEvent>,
    pub back_off: Vec<BackOffStatus>,
}

impl Update {
    /// Writes the update into the service's status, at `wall`.
    pub fn apply(self, svc: &mut ServiceStatus, wall: SystemTime) {
        for c in self.conditions {
            svc.set_condition(c.kind, c.status, c.reason, &c.message, wall);
        }
        for e in self.events {
            svc.record(e.kind, e.reason, e.message, wall);
        }
        svc.back_off = self.back_off;
    }
}

/// Whether setting `kind` to `status` is a change (or the condition is new).
fn flips(previous: &ServiceStatus, kind: ConditionType, status: bool) -> bool {
    previous.condition(kind).map(|c| c.status) != Some(status)
}

/// Conditions, events and back-off lines after `plan`, given the status before it.
pub fn derive(plan: &Plan, ctx: &Context<'_>, previous: &ServiceStatus) -> Update {
    let mut update = Update::default();
    scaling(plan, ctx, &mut update);
    available(plan, ctx, &mut update);
    progressing(plan, ctx, previous, &mut update);
    update.back_off = back_off(plan, ctx);
    replica_failure(plan, ctx, previous, &mut update);
    if ctx.spec.load_balancer.is_some() {
        load_balancer_synced(plan, ctx, previous, &mut update);
    }
    update
}

/// Scaling, operator holds and members on the wrong network, as events. The first pass
/// compares with what runs, so a new service is scaled up from 0 and a restarted
/// controller that adopts the same count says nothing.
fn scaling(plan: &Plan, ctx: &Context<'_>, update: &mut Update) {
    let counts = plan.counts;
    let prev = ctx.last_desired.unwrap_or(counts.current);
    if prev != counts.desired {
        let verb = if counts.desired > prev { "up" } else { "down" };
        update.events.push(NewEvent::normal(
            "ScalingReplicaSet",
            format!("Scaled {verb} from {prev} to {}", counts.desired),
        ));
    }
    for note in &plan.notes {
        match note {
            Note::CanaryStep {
                step,
                weight,
                new_replicas,
            } => update.events.push(NewEvent::normal(
                "CanaryStep",
                format!(
                    "Canary step {step}: {weight}% of the traffic to template {} on \
                     {new_replicas} new replica(s)",
                    ctx.template_hash
                ),
            )),
            Note::GuardBatch {
                batch,
                new_ready,
                desired,
            } => update.events.push(NewEvent::normal(
                "RolloutBatch",
                format!(
                    "Rolling update batch {batch}: {new_ready} of {desired} replica(s) on \
                     template {}, watched by the analysis before the old ones go",
                    ctx.template_hash
                ),
            )),
            Note::RolloutAborted {
                template_hash,
                message,
            } => update.events.push(NewEvent::warning(
                "RolloutAborted",
                format!(
                    "Rollout of template {template_hash} aborted: {message}; the old \
                     replicas take all the traffic back"
                ),
            )),
            Note::OperatorHold { name, slot, admin } => {
                update.events.push(NewEvent::warning(
                    "ServerHeld",
                    format!(
                        "Server {slot} of replica {name} ({admin:?}) was taken out of rotation \
                         by someone else; left as is"
                    ),
                ));
            }
            Note::MemberNetworkMismatch {
                name,
                id,
                on,
                network,
            } => {
                let on = if on.is_empty() {
                    "no network".to_owned()
                } else {
                    on.join(", ")
                };
                update.events.push(NewEvent::warning(
                    "MemberNetworkMismatch",
                    format!(
                        "Container {name} ({id}) joins this service (dockscale.join) but is on \
                         {on}; it must be on the service's network `{network}` to be served \
                         (`docker network connect {network} {name}`)"
                    ),
                ));
            }
            _ => {}
        }
    }
}

/// At least `desired - maxUnavailable` ready.
fn available(plan: &Plan, ctx: &Context<'_>, update: &mut Update) {
    let counts = plan.counts;
    let min_available = counts
        .desired
        .saturating_sub(ctx.spec.rollout.max_unavailable);
    let available = counts.ready >= min_available;
    update.conditions.push(ConditionValue {
        kind: ConditionType::Available,
        status: available,
        reason: if available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        message: format!(
            "{} of {} replicas ready (at least {min_available} needed)",
            counts.ready, counts.desired
        ),
    });
}

/// Progressing, like a Deployment's: stalled past its deadline, settled on the new
/// template (a completed rollout says so once), or on its way.
fn progressing(plan: &Plan, ctx: &Context<'_>, previous: &ServiceStatus, update: &mut Update) {
    let counts = plan.counts;
    let hash = ctx.template_hash;
    let stalled = plan
        .notes
        .iter()
        .any(|n| matches!(n, Note::RolloutStalled { .. }));
    let settled = counts.ready_updated == counts.desired
        && counts.current == counts.desired
        && counts.pending == 0
        && counts.terminating == 0;
    let aborted = ctx.memory.aborted_template.as_deref() == Some(hash)
        || plan.aborted.as_deref() == Some(hash);
    let (status, reason, message) = if aborted {
        (
            false,
            "RolloutAborted",
            format!(
                "the canary of template {hash} was aborted (see the RolloutAborted event): \
                 the old replicas serve; it is not retried until the spec changes or \
                 `dockscale rollout retry`"
            ),
        )
    } else if stalled {
        (
            false,
            "ProgressDeadlineExceeded",
            format!(
                "template {hash} made no progress for {}: {} of {} updated replicas ready; \
                 the old replicas keep serving",
                ctx.spec.rollout.progress_deadline, counts.ready_updated, counts.desired
            ),
        )
    } else if settled {
        (
            true,
            "NewReplicasAvailable",
            format!("{} replicas of template {hash} ready", counts.ready_updated),
        )
    } else {
        (
            true,
            "ReplicasUpdating",
            format!(
                "{} of {} replicas of template {hash} ready, {} starting, {} terminating",
                counts.ready_updated, counts.desired, counts.pending, counts.terminating
            ),
        )
    };
    let was_complete = previous
        .condition(ConditionType::Progressing)
        .is_some_and(|c| c.reason == "NewReplicasAvailable");
    if stalled && flips(previous, ConditionType::Progressing, status) {
        update.events.push(NewEvent::warning(
            "ProgressDeadlineExceeded",
            message.clone(),
        ));
    }
    if settled && !was_complete && ctx.memory.rollout.as_ref().is_some_and(|r| r.complete) {
        update.events.push(NewEvent::normal(
            "RolloutComplete",
            format!("Rollout complete: {message}"),
        ));
    }
    update.conditions.push(ConditionValue {
        kind: ConditionType::Progressing,
        status,
        reason,
        message,
    });
}

/// The lines backing off, for the status API.
fn back_off(plan: &Plan, ctx: &Context<'_>) -> Vec<BackOffStatus> {
    let held = plan.notes.iter().find_map(|n| match n {
        Note::CrashLoopBackOff { held } => Some(held),
        _ => None,
    });
    held.into_iter()
        .flatten()
        .map(|v| BackOffStatus {
            replica: v.last_exit.name.clone(),
            exit_code: v.last_exit.code,
            cause: v.last_exit.cause.label().to_owned(),
            ran_for_seconds: v.last_exit.ran_for.as_secs_f64(),
            restarts: v.restarts,
            next_replacement: ctx.wall + v.not_before.saturating_duration_since(ctx.now),
        })
        .collect()
}

/// ReplicaFailure: a missing image (an event the first time), lines backing off, a
/// failed create, or lines that crashed at least twice and whose replacement is not
/// serving yet (the loop is still on until the service is fully ready again).
fn replica_failure(plan: &Plan, ctx: &Context<'_>, previous: &ServiceStatus, update: &mut Update) {
    let counts = plan.counts;
    let looping = ctx
        .memory
        .replicas
        .values()
        .filter(|t| t.restarts >= 2)
        .count();
    let failure = plan
        .notes
        .iter()
        .find_map(|n| match n {
            Note::ImageMissing { image } => Some((
                "ImageNotFound",
                format!(
                    "image `{image}` is not present locally (imagePullPolicy: Never): build or \
                     load it"
                ),
            )),
            Note::ImagePullBackOff {
                image,
                message,
                retry_in,
            } => Some((
                "ImagePullBackOff",
                format!(
                    "Back-off pulling image {image}: {message}; next pull in {}",
                    humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)))
                ),
            )),
            Note::CrashLoopBackOff { held } => Some(("CrashLoopBackOff", backing_off(held, ctx))),
            _ => None,
        })
        .or_else(|| ctx.create_error.map(|(reason, m)| (reason, m.to_owned())))
        .or_else(|| {
            (looping > 0 && counts.ready < counts.desired).then(|| {
                (
                    "CrashLoopBackOff",
                    format!(
                        "{looping} replica line(s) crashed at least twice in a row; replacing \
                         them with back-off"
                    ),
                )
            })
        });
    let Some((reason, message)) = failure else {
        update.conditions.push(ConditionValue {
            kind: ConditionType::ReplicaFailure,
            status: false,
            reason: "",
            message: String::new(),
        });
        return;
    };
    let was = previous
        .condition(ConditionType::ReplicaFailure)
        .map(|c| (c.status, c.reason.as_str()));
    if reason == "ImageNotFound" && was != Some((true, reason)) {
        update
            .events
            .push(NewEvent::warning(reason, message.clone()));
    }
    update.conditions.push(ConditionValue {
        kind: ConditionType::ReplicaFailure,
        status: true,
        reason,
        message,
    });
}

/// `2 replica line(s) backing off: w-abcde exited (code 1) after running 2s (3 crashes
/// in a row; next replacement in 20s); ...`
fn backing_off(held: &[super::Vacancy], ctx: &Context<'_>) -> String {
    let lines: Vec<String> = held
        .iter()
        .map(|v| {
            let wait = v.not_before.saturating_duration_since(ctx.now).as_secs();
            format!(
                "{} {} ({} crashes in a row; next replacement in {})",
                v.last_exit.name,
                v.last_exit.describe(),
                v.restarts,
                humantime::format_duration(Duration::from_secs(wait))
            )
        })
        .collect();
    format!(
        "{} replica line(s) backing off: {}",
        held.len(),
        lines.join("; ")
    )
}

/// LoadBalancerSynced: the configuration failed, the backend could not be read, a
/// replica waits for a free slot, or a command failed (an event when it turns false).
fn load_balancer_synced(
    plan: &Plan,
    ctx: &Context<'_>,
    previous: &ServiceStatus,
    update: &mut Update,
) {
    let noted = |f: &dyn Fn(&Note) -> Option<(&'static str, String)>| plan.notes.iter().find_map(f);
    let problem = ctx
        .lb_config_error
        .map(|m| ("ConfigureFailed", m.to_owned()))
        .or_else(|| {
            noted(&|n| match n {
                Note::BackendUnavailable { reason, message } => Some((*reason, message.clone())),
                _ => None,
            })
        })
        .or_else(|| {
            noted(&|n| match n {
                Note::NoFreeSlot { backend, waiting } => Some((
                    "NoFreeSlot",
                    format!("backend {backend} has no free server slot for {waiting} replica(s)"),
                )),
                _ => None,
            })
        })
        .or_else(|| ctx.lb_errors.first().map(|e| ("CommandFailed", e.clone())));
    let Some((reason, message)) = problem else {
        update.conditions.push(ConditionValue {
            kind: ConditionType::LoadBalancerSynced,
            status: true,
            reason: "Synced",
            message: "the backend's servers in rotation are the ready replicas".to_owned(),
        });
        return;
    };
    if flips(previous, ConditionType::LoadBalancerSynced, false) {
        update
            .events
            .push(NewEvent::warning(reason, message.clone()));
    }
    update.conditions.push(ConditionValue {
        kind: ConditionType::LoadBalancerSynced,
        status: false,
        reason,
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::replica::ExitCause;
    use crate::reconcile::{Counts, ExitRecord, RolloutProgress, Vacancy};
    use crate::testing;

    struct Fixture {
        spec: ServiceSpec,
        memory: Memory,
        now: Instant,
        wall: SystemTime,
    }

    impl Fixture {
        fn new(spec: ServiceSpec) -> Self {
            Fixture {
                spec,
                memory: Memory::default(),
                now: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            }
        }

        fn derive(&self, plan: &Plan, previous: &ServiceStatus) -> Update {
            let ctx = Context {
                spec: &self.spec,
                template_hash: "h1",
                memory: &self.memory,
                create_error: None,
                lb_config_error: None,
                lb_errors: &[],
                last_desired: Some(plan.counts.desired),
                now: self.now,
                wall: self.wall,
            };
            derive(plan, &ctx, previous)
        }
    }

    fn counts(desired: u32, ready: u32) -> Counts {
        Counts {
            desired,
            current: ready,
            ready,
            updated: ready,
            ready_updated: ready,
            pending: 0,
            terminating: 0,
        }
    }

    fn condition(u: &Update, kind: ConditionType) -> &ConditionValue {
        u.conditions
            .iter()
            .find(|c| c.kind == kind)
            .expect("condition")
    }

    fn status() -> ServiceStatus {
        ServiceStatus::new("w", SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_settled_service_is_available_and_has_its_new_replicas() {
        let f = Fixture::new(testing::spec().replicas(3).lb().build());
        let plan = Plan {
            counts: counts(3, 3),
            ..Plan::default()
        };
        let u = f.derive(&plan, &status());
        assert!(condition(&u, ConditionType::Available).status);
        let progressing = condition(&u, ConditionType::Progressing);
        assert_eq!(progressing.reason, "NewReplicasAvailable");
        assert!(!condition(&u, ConditionType::ReplicaFailure).status);
        assert_eq!(
            condition(&u, ConditionType::LoadBalancerSynced).reason,
            "Synced"
        );
        assert!(u.events.is_empty(), "{:?}", u.events);
    }

    #[test]
    fn a_rollout_is_reported_complete_once() {
        let mut f = Fixture::new(testing::spec().replicas(2).build());
        f.memory.rollout = Some(RolloutProgress {
            template_hash: "h1".into(),
            last_progress: f.now,
            ready_updated: 2,
            old_left: 0,
            complete: true,
        });
        let plan = Plan {
            counts: counts(2, 2),
            ..Plan::default()
        };
        let mut before = status();
        let first = f.derive(&plan, &before);
        assert_eq!(first.events[0].reason, "RolloutComplete");
        first.apply(&mut before, f.wall);
        assert!(f.derive(&plan, &before).events.is_empty());
    }

    #[test]
    fn a_stalled_rollout_says_so_once_and_the_old_replicas_keep_serving() {
        let f = Fixture::new(testing::spec().replicas(2).build());
        let plan = Plan {
            counts: Counts {
                ready_updated: 0,
                ..counts(2, 2)
            },
            notes: vec![Note::RolloutStalled {
                template_hash: "h1".into(),
            }],
            ..Plan::default()
        };
        let mut before = status();
        let first = f.derive(&plan, &before);
        let progressing = condition(&first, ConditionType::Progressing).clone();
        assert_eq!(
            (progressing.status, progressing.reason),
            (false, "ProgressDeadlineExceeded")
        );
        assert_eq!(first.events[0].reason, "ProgressDeadlineExceeded");
        first.apply(&mut before, f.wall);
        assert!(f.derive(&plan, &before).events.is_empty(), "reported once");
    }

    #[test]
    fn backing_off_lines_are_listed_with_their_exit_and_next_replacement() {
        let f = Fixture::new(testing::spec().replicas(2).build());
        let vacancy = Vacancy {
            restarts: 3,
            not_before: f.now + Duration::from_secs(20),
            template_hash: "h1".into(),
            last_exit: ExitRecord {
                name: "w-abcde".into(),
                code: None,
                cause: ExitCause::OutOfMemory,
                ran_for: Duration::from_millis(2500),
            },
        };
        let plan = Plan {
            counts: counts(2, 1),
            notes: vec![Note::CrashLoopBackOff {
                held: vec![vacancy],
            }],
            ..Plan::default()
        };
        let u = f.derive(&plan, &status());
        let failure = condition(&u, ConditionType::ReplicaFailure);
        assert_eq!((failure.status, failure.reason), (true, "CrashLoopBackOff"));
        assert!(
            failure.message.contains("w-abcde was OOM-killed"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("next replacement in 20s"),
            "{}",
            failure.message
        );
        assert_eq!(u.back_off.len(), 1);
        assert_eq!(u.back_off[0].cause, "oom");
        assert_eq!(
            u.back_off[0].next_replacement,
            f.wall + Duration::from_secs(20)
        );
    }

    #[test]
    fn a_missing_image_is_an_event_once_and_a_condition_while_it_lasts() {
        let f = Fixture::new(testing::spec().replicas(1).build());
        let plan = Plan {
            counts: counts(1, 0),
            notes: vec![Note::ImageMissing {
                image: "nope:1".into(),
            }],
            ..Plan::default()
        };
        let mut before = status();
        let first = f.derive(&plan, &before);
        assert_eq!(first.events.last().map(|e| e.reason), Some("ImageNotFound"));
        first.apply(&mut before, f.wall);
        let again = f.derive(&plan, &before);
        assert!(!again.events.iter().any(|e| e.reason == "ImageNotFound"));
        assert_eq!(
            condition(&again, ConditionType::ReplicaFailure).reason,
            "ImageNotFound"
        );
    }

    #[test]
    fn a_failed_pull_is_image_pull_back_off_with_the_registrys_words() {
        let f = Fixture::new(testing::spec().replicas(1).build());
        let plan = Plan {
            counts: counts(1, 0),
            notes: vec![Note::ImagePullBackOff {
                image: "127.0.0.1:5000/w:1".into(),
                message: "unauthorized: authentication required".into(),
                retry_in: Duration::from_secs(4),
            }],
            ..Plan::default()
        };
        let update = f.derive(&plan, &status());
        let c = condition(&update, ConditionType::ReplicaFailure);
        assert!(c.status);
        assert_eq!(c.reason, "ImagePullBackOff");
        assert_eq!(
            c.message,
            "Back-off pulling image 127.0.0.1:5000/w:1: unauthorized: authentication required; \
             next pull in 4s"
        );
    }

    #[test]
    fn an_unreadable_backend_is_reported_with_its_reason() {
        let f = Fixture::new(testing::spec().replicas(1).lb().build());
        let plan = Plan {
            counts: counts(1, 0),
            notes: vec![Note::BackendUnavailable {
                reason: "BackendMissing",
                message: "HAProxy has no backend `web`".into(),
            }],
            ..Plan::default()
        };
        let u = f.derive(&plan, &status());
        let synced = condition(&u, ConditionType::LoadBalancerSynced);
        assert_eq!((synced.status, synced.reason), (false, "BackendMissing"));
        assert_eq!(u.events[0].reason, "BackendMissing");
    }

    #[test]
    fn the_first_pass_of_a_new_service_scales_up_from_zero_and_an_adoption_says_nothing() {
        let f = Fixture::new(testing::spec().replicas(3).build());
        let ctx = |current: u32| Plan {
            counts: Counts {
                current,
                ..counts(3, current)
            },
            ..Plan::default()
        };
        let first_pass = |plan: &Plan| {
            let c = Context {
                spec: &f.spec,
                template_hash: "h1",
                memory: &f.memory,
                create_error: None,
                lb_config_error: None,
                lb_errors: &[],
                last_desired: None,
                now: f.now,
                wall: f.wall,
            };
            derive(plan, &c, &status()).events
        };
        assert_eq!(first_pass(&ctx(0))[0].message, "Scaled up from 0 to 3");
        assert!(first_pass(&ctx(3)).is_empty());
    }
}
