//! The services as the loop keeps them: each one's spec, memory and due time, the
//! spec files re-read (a bad edit changes nothing), and the load balancer configured
//! with the services that need it.

use std::collections::BTreeSet;

use tokio::time::Instant;

use crate::autoscale::{Autoscaler, Reason};
use crate::controller::error::{error_backoff, error_policy, ReconcileError};
use crate::controller::watch::Change;
use crate::controller::Controller;
use crate::lb::{LoadBalancer, MemberCounts};
use crate::model::backend::Holds;
use crate::model::replica::{template_hash, template_hash_with_image, Replica};
use crate::reconcile::image::PullState;
use crate::reconcile::Memory;
use crate::runtime::ContainerRuntime;
use crate::serve::metrics::Metrics;
use crate::serve::status::{ConditionType, EventType, ServiceStatus, StatusHandle};
use crate::spec::frontend::Frontend;
use crate::spec::manifest;
use crate::spec::{ImagePullPolicy, ScaledService};

/// One service as the loop keeps it.
pub(crate) struct Entry {
    pub spec: ScaledService,
    /// What the replicas of the current template are labelled with: the template's
    /// hash, with the resolved image ID for an `Always` image.
    pub template_hash: String,
    /// The hash of the template alone (a change of it starts the image's pulls afresh).
    pub base_hash: String,
    /// The image's pulls.
    pub pull: PullState,
    /// The document was removed: drive the replicas to zero, then forget the service.
    pub deleting: bool,
    pub memory: Memory,
    /// When its next pass is due.
    pub due: Option<Instant>,
    /// Failed passes in a row.
    pub failures: u32,
    /// The desired count of the previous pass, to report scaling.
    pub last_desired: Option<u32>,
    /// The last create failure, shown until a create succeeds.
    pub create_error: Option<(&'static str, String)>,
    /// The autoscaler, once the service's replicas were first seen (it starts from
    /// the count found running, so a restart of dockscale does not reset it).
    pub autoscaler: Option<Autoscaler>,
    /// The autoscaler's last decision reason, to log repeats at debug level.
    pub last_reason: Option<Reason>,
    /// Scale to zero: HAProxy's held-request counters as last read, for the deltas.
    pub holds_seen: Option<Holds>,
    /// Backends the service left (its `loadBalancer.backend` changed, or the section was
    /// removed): the servers dockscale filled there leave rotation.
    pub left_backends: Vec<String>,
    /// Its last rollouts (loaded at start, saved as they change).
    pub history: crate::reconcile::history::History,
    /// The canary step as last judged, while the canary (or its abort) is the spec's.
    pub last_analysis: Option<crate::reconcile::history::StepRecord>,
    /// Why the spec's template was aborted, while it is held back.
    pub abort_message: Option<String>,
}

impl Entry {
    pub fn new(spec: ScaledService) -> Self {
        Entry {
            template_hash: template_hash(&spec.spec),
            base_hash: template_hash(&spec.spec),
            pull: PullState::loaded(spec.spec.template.image_pull_policy),
            spec,
            deleting: false,
            memory: Memory::default(),
            due: Some(Instant::now()),
            failures: 0,
            last_desired: None,
            create_error: None,
            autoscaler: None,
            last_reason: None,
            holds_seen: None,
            left_backends: Vec::new(),
            history: Default::default(),
            last_analysis: None,
            abort_message: None,
        }
    }

    /// After a pass: every replica ready on the current template (and none of another)
    /// makes it the one an aborted rollout will go back to. Returns whether that changed
    /// (the history is saved then).
    pub fn settled(&mut self, plan: &crate::reconcile::Plan) -> bool {
        let c = plan.counts;
        let settled = plan.aborted.is_none()
            && c.ready_updated > 0
            && c.ready_updated == c.desired
            && c.current == c.updated
            && c.pending == 0;
        let stable = &mut self.history.stable;
        let same = stable.as_ref().is_some_and(|s| {
            s.template_hash == self.template_hash && s.template == self.spec.spec.template
        });
        if !settled || same {
            return false;
        }
        *stable = Some(crate::reconcile::history::Stable {
            template_hash: self.template_hash.clone(),
            template: self.spec.spec.template.clone(),
        });
        true
    }

    /// The template an aborted rollout goes back to, when known and not the current.
    pub fn previous_template(&self) -> Option<&str> {
        self.history
            .stable
            .as_ref()
            .map(|s| s.template_hash.as_str())
            .filter(|hash| *hash != self.template_hash)
    }

    /// The replica count to reach: 0 while deleting, else the autoscaler's or the spec's.
    pub fn desired(&self) -> u32 {
        if self.deleting {
            0
        } else if let (Some(a), Some(_)) = (&self.autoscaler, &self.spec.spec.autoscale) {
            a.desired()
        } else {
            self.spec.spec.replicas
        }
    }

    /// The warm pool's size to keep: the spec's, 0 while deleting.
    pub fn warm_size(&self) -> u32 {
        match (&self.spec.spec.autoscale, self.deleting) {
            (Some(a), false) => a.warm_pool.as_ref().map_or(0, |p| p.size),
            _ => 0,
        }
    }

    fn always(&self) -> bool {
        self.spec.spec.template.image_pull_policy == ImagePullPolicy::Always
    }

    /// The template hash from the spec and, for `Always`, the resolved image ID.
    /// Returns whether it changed.
    pub fn rehash(&mut self) -> bool {
        let hash = match (&self.pull.resolved, self.always()) {
            (Some(id), true) => template_hash_with_image(&self.spec.spec, id),
            _ => template_hash(&self.spec.spec),
        };
        let changed = hash != self.template_hash;
        self.template_hash = hash;
        changed
    }

    /// The spec's template was loaded (new, or changed): its image is pulled afresh.
    fn template_loaded(&mut self) {
        let base = template_hash(&self.spec.spec);
        if base != self.base_hash {
            self.base_hash = base;
            self.pull = PullState::loaded(self.spec.spec.template.image_pull_policy);
        }
        self.rehash();
    }

    /// An `Always` image not resolved yet (dockscale just started, or the template
    /// changed): the replicas that run are taken as current until its tag is
    /// resolved, so that nothing is rolled before the registry was asked. Creates
    /// wait for the resolution meanwhile.
    pub fn adopt_until_resolved(&mut self, listed: &[Replica]) {
        if !self.always() || self.pull.resolved.is_some() {
            return;
        }
        let name = self.spec.name();
        let newest = listed
            .iter()
            .filter(|r| r.service == name && !r.is_warm())
            .max_by_key(|r| r.created_at_ns);
        if let Some(r) = newest {
            self.template_hash = r.template_hash.clone();
        }
    }

    /// `Always`: resolve the tag again (a reload the operator asked for).
    pub fn resolve_again(&mut self) {
        if self.always() {
            self.pull.resolve_wanted = true;
            self.wake(Instant::now());
        }
    }

    /// Due at `at`, unless due sooner already.
    pub fn wake(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }
}

/// The load balancer's configuration as last applied, and its failures.
#[derive(Default)]
pub(crate) struct LbState {
    /// The services, member counts and frontends it was last configured with, to
    /// reconfigure only on change.
    pub configured: Option<(Vec<ScaledService>, MemberCounts, Vec<Frontend>)>,
    /// The most members seen at once per service since the start: the pools leave
    /// room for them (a pool never shrinks while HAProxy runs, so neither does this).
    pub members_seen: MemberCounts,
    /// Why the last configuration failed, while it fails.
    pub error: Option<String>,
    /// Failed configurations in a row, and when to try again.
    pub failures: u32,
    pub retry_at: Option<Instant>,
}

impl<R: ContainerRuntime, L: LoadBalancer> Controller<R, L> {
    /// A spec file changed: a file renamed into place is read at once; a write in place
    /// is read once it settled (any write still settling keeps its own deadline).
    pub(super) async fn on_spec_change(&mut self, change: Change, reload_at: &mut Option<Instant>) {
        match change {
            Change::Replaced => self.reload(true).await,
            Change::Touched => *reload_at = Some(Instant::now() + self.settings.debounce),
        }
    }

    /// Re-reads the spec paths. A spec that does not validate changes nothing: the last
    /// good spec stays in force and the error is logged and shown in status.
    pub(super) async fn reload(&mut self, changed: bool) {
        match manifest::load_all(&self.settings.paths, crate::spec::Runtime::Docker) {
            Ok(loaded) => {
                let frontends: Vec<Frontend> =
                    loaded.frontends.into_iter().map(|l| l.frontend).collect();
                let services_changed = self.spec_accepted(loaded.services);
                let frontends_changed = self.frontends != frontends;
                self.frontends = frontends;
                if services_changed || frontends_changed {
                    self.configure_lb().await;
                }
                // A reload the operator caused (a file written, SIGHUP) resolves the
                // `Always` tags again; the periodic resync does not.
                if changed {
                    self.services.values_mut().for_each(Entry::resolve_again);
                }
            }
            Err(errors) => self.spec_rejected(&errors, changed),
        }
    }

    /// A spec that does not validate: logged (once per new error, or on every edit),
    /// counted, and `SpecInvalid` on every service.
    fn spec_rejected(&mut self, errors: &manifest::SpecErrors, changed: bool) {
        let now = self.settings.clock.wall();
        spec_rejected(&self.metrics, &self.status, now, errors, changed);
    }

    /// A spec that validates: changed services take their new spec, new ones are
    /// added, those whose document went away are removed (their replicas first).
    /// Returns whether anything changed.
    fn spec_accepted(&mut self, loaded: Vec<manifest::LoadedService>) -> bool {
        self.metrics
            .spec_reloads_total
            .with_label_values(&["ok"])
            .inc();
        self.metrics.spec_valid.set(1);
        let mut seen = BTreeSet::new();
        let mut any_change = false;
        for l in loaded {
            seen.insert(l.service.name().to_owned());
            any_change |= self.service_loaded(l.service);
        }
        let now = self.settings.clock.wall();
        for (name, entry) in self.services.iter_mut() {
            if !seen.contains(name) && !entry.deleting {
                any_change = true;
                entry.deleting = true;
                entry.wake(Instant::now());
                self.status.update(|s| {
                    if let Some(svc) = s.services.get_mut(name) {
                        svc.deleting = true;
                        svc.record(
                            EventType::Normal,
                            "ServiceRemoved",
                            "the service's document was removed: removing its replicas".to_owned(),
                            now,
                        );
                    }
                });
            }
        }
        self.status.update(|s| {
            if !s.spec_errors.is_empty() {
                tracing::info!("spec valid again");
            }
            s.spec_errors.clear();
            s.spec_loaded = true;
            for svc in s.services.values_mut() {
                svc.set_condition(ConditionType::SpecInvalid, false, "Valid", "", now);
            }
        });
        any_change
    }

    /// One service of a spec that validates: new, changed (a new generation), or the
    /// same. Returns whether it is new or changed.
    fn service_loaded(&mut self, service: ScaledService) -> bool {
        let name = service.name().to_owned();
        let now = self.settings.clock.wall();
        let Some(entry) = self.services.get_mut(&name) else {
            tracing::info!(service = %name, "new service");
            let mut entry = Entry::new(service);
            if let Some(dir) = &self.settings.history_dir {
                entry.load_history(dir);
            }
            self.services.insert(name.clone(), entry);
            self.status.update(|s| {
                s.services
                    .insert(name.clone(), ServiceStatus::new(&name, now));
            });
            return true;
        };
        if entry.spec == service && !entry.deleting {
            return false;
        }
        let old_replicas = entry.spec.spec.replicas;
        let backend_of = |s: &ScaledService| {
            s.spec
                .load_balancer
                .as_ref()
                .map(|lb| lb.backend.to_string())
        };
        if let Some(old) = backend_of(&entry.spec) {
            if backend_of(&service).as_ref() != Some(&old) {
                entry.left_backends.push(old);
            }
        }
        entry.spec = service;
        entry.template_loaded();
        entry.deleting = false;
        entry.failures = 0;
        entry.create_error = None;
        entry.wake(Instant::now());
        let change = replicas_change(
            old_replicas,
            entry.spec.spec.replicas,
            entry.spec.spec.autoscale.is_some(),
        );
        self.status.update(|s| {
            if let Some(svc) = s.services.get_mut(&name) {
                svc.generation += 1;
                svc.deleting = false;
                svc.record(
                    EventType::Normal,
                    "SpecChanged",
                    format!("spec generation {} loaded{change}", svc.generation),
                    now,
                );
            }
        });
        true
    }

    /// Hands the load balancer the services it should serve, when that set changed.
    pub(super) async fn configure_lb(&mut self) {
        let wanted: Vec<ScaledService> = self
            .services
            .values()
            .filter(|e| e.spec.spec.load_balancer.is_some())
            .map(|e| e.spec.clone())
            .collect();
        let members = self.lb_state.members_seen.clone();
        let wanted = (wanted, members, self.frontends.clone());
        if self.lb_state.configured.as_ref() == Some(&wanted) {
            return;
        }
        match self.lb.configure(&wanted.0, &wanted.1, &wanted.2).await {
            Ok(grown) => {
                let now = self.settings.clock.wall();
                self.status.update(|s| {
                    for g in grown {
                        if let Some(svc) = s.services.get_mut(&g.service) {
                            svc.record(
                                EventType::Normal,
                                "SlotPoolGrown",
                                format!(
                                    "{} servers at once (replicas and members) need more than the {} slots \
                                     of {}: grown \
                                     to {}, HAProxy reloaded with every server written in (pools \
                                     never shrink while HAProxy runs; replica changes within the \
                                     pool never reload)",
                                    g.needed, g.from, g.backend, g.to
                                ),
                                now,
                            );
                        }
                    }
                });
                let recovered = self.lb_state.failures > 0;
                self.lb_state = LbState {
                    members_seen: wanted.1.clone(),
                    configured: Some(wanted),
                    ..LbState::default()
                };
                // Configured again after failing: the services it serves catch up now,
                // not at their next resync.
                if recovered {
                    let now = Instant::now();
                    for entry in self.services.values_mut() {
                        if entry.spec.spec.load_balancer.is_some() {
                            entry.wake(now);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::report::Chain(&e), "configuring the load balancer");
                self.lb_state.error = Some(crate::report::chain(&e));
                self.lb_state.failures += 1;
                let e = ReconcileError::LoadBalancer(e);
                let after = error_policy(&e, self.lb_state.failures)
                    .unwrap_or_else(|| error_backoff(self.lb_state.failures));
                self.lb_state.retry_at = Some(Instant::now() + after);
            }
        }
    }

    /// Containers of services that no spec names: reported, never removed (they may
    /// belong to another dockscale, or the spec path may be wrong).
    pub(super) async fn report_orphans(&self) {
        let Ok(listed) = self.runtime.list_owned().await else {
            return;
        };
        let orphans: BTreeSet<&str> = listed
            .iter()
            .map(|r| r.service.as_str())
            .filter(|s| !self.services.contains_key(*s))
            .collect();
        for service in orphans {
            tracing::warn!(
                service,
                "replicas of a service that no spec names are left running; remove them with \
                 `docker rm -f $(docker ps -aq --filter label=dockscale.service={service})`"
            );
        }
    }
}

/// How a spec change moved `replicas`, for the `SpecChanged` event. Under autoscaling
/// the field is only the starting point, which the event says rather than let an
/// operator wait for a count that will not come.
fn replicas_change(old: u32, new: u32, autoscaled: bool) -> String {
    match (old == new, autoscaled) {
        (true, _) => String::new(),
        (false, false) => format!(" (replicas {old} -> {new})"),
        (false, true) => format!(
            " (replicas {old} -> {new}: autoscaled, so only the starting point; the autoscaler \
             sets the count within its bounds)"
        ),
    }
}

/// A spec that does not validate, whatever runs the replicas: logged (once per new
/// error, or on every edit), counted, and `SpecInvalid` on every service.
pub(crate) fn spec_rejected(
    metrics: &Metrics,
    status: &StatusHandle,
    now: std::time::SystemTime,
    errors: &manifest::SpecErrors,
    changed: bool,
) {
    metrics
        .spec_reloads_total
        .with_label_values(&["invalid"])
        .inc();
    metrics.spec_valid.set(0);
    let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    let is_new = status.read().spec_errors != lines;
    if is_new || changed {
        for line in &lines {
            tracing::error!("spec rejected, last good spec kept: {line}");
        }
    }
    let message = lines.join("; ");
    status.update(|s| {
        s.spec_errors = lines.clone();
        for svc in s.services.values_mut() {
            if svc.set_condition(
                ConditionType::SpecInvalid,
                true,
                "ValidationFailed",
                &message,
                now,
            ) {
                svc.record(
                    EventType::Warning,
                    "SpecInvalid",
                    format!("spec rejected, last good spec kept: {message}"),
                    now,
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::replicas_change;

    #[test]
    fn a_spec_change_says_how_replicas_moved_and_who_decides() {
        assert_eq!(replicas_change(3, 3, false), "");
        assert_eq!(replicas_change(3, 5, false), " (replicas 3 -> 5)");
        let autoscaled = replicas_change(3, 5, true);
        assert!(
            autoscaled.starts_with(" (replicas 3 -> 5: autoscaled"),
            "{autoscaled}"
        );
    }
}
