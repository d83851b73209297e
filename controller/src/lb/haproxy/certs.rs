//! The shared frontends as the managed HAProxy serves them, and their certificates
//! kept current: [`Frontends`] installs them (at each configuration), then compares
//! their files with what HAProxy serves (each second) and says which to swap at
//! runtime and when a reload is due (a certificate added or removed). It writes the
//! frontends' status and certificate metrics; the runtime API calls are the
//! balancer's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::frontend::FrontendConfig;
use super::tls::{self, Installed, Layout, Source};
use crate::serve::metrics::Metrics;
use crate::serve::status::{
    CertificateStatus, ConditionType, EventType, FrontendStatus, StatusHandle,
};
use crate::spec::frontend::Frontend;

/// One frontend and its certificates.
struct Setup {
    frontend: Frontend,
    /// What the spec's paths held at the last install.
    sources: Vec<Source>,
    installed: Vec<Installed>,
    /// Files that do not pass their check, with why (reported once per reason).
    invalid: BTreeMap<Source, String>,
}

/// A certificate whose file changed and passed its check: to swap into HAProxy.
#[derive(Clone, Debug)]
pub struct Swap {
    pub frontend: String,
    /// The installed file, which is the certificate's name in HAProxy.
    pub file: PathBuf,
    pub pem: String,
    pub material: tls::Material,
}

/// What [`Frontends::changes`] found.
#[derive(Debug, Default)]
pub struct Changes {
    pub swaps: Vec<Swap>,
    /// Certificates were added or removed (or one rejected at install now passes): the
    /// configuration must be installed again, which reloads HAProxy.
    pub reinstall: bool,
}

/// The shared frontends of the managed HAProxy.
#[derive(Default)]
pub struct Frontends {
    setups: Vec<Setup>,
    /// The backend of each service, as last configured.
    backends: BTreeMap<String, String>,
}

impl Frontends {
    /// Installs the frontends' certificates into `state_dir` and returns their
    /// configurations. A certificate that does not pass its check is left out (the one
    /// installed before stays); the status says so.
    pub fn install(
        &mut self,
        state_dir: &Path,
        frontends: &[Frontend],
        backends: BTreeMap<String, String>,
        status: &StatusHandle,
        metrics: &Metrics,
    ) -> Vec<FrontendConfig> {
        let previous: BTreeMap<String, Vec<Installed>> = self
            .setups
            .drain(..)
            .map(|s| (s.frontend.name().to_owned(), s.installed))
            .collect();
        self.backends = backends;
        let mut configs = Vec::new();
        metrics.certificate_expiry_timestamp_seconds.reset();
        for frontend in frontends {
            let name = frontend.name().to_owned();
            let layout = Layout::new(state_dir, &name);
            let mut setup = Setup {
                frontend: frontend.clone(),
                sources: Vec::new(),
                installed: Vec::new(),
                invalid: BTreeMap::new(),
            };
            let mut problems = Vec::new();
            if let Some(t) = &frontend.spec.tls {
                match tls::sources(&t.certificates) {
                    Ok(sources) => setup.sources = sources,
                    Err(e) => problems.push(e),
                }
                let old = previous.get(&name).map(Vec::as_slice).unwrap_or_default();
                match tls::install(&layout, &setup.sources, old) {
                    Ok(done) => {
                        setup.installed = done.installed;
                        for (source, why) in done.rejected {
                            problems.push(format!("{}: {why}", source.label()));
                            setup.invalid.insert(source, why);
                        }
                    }
                    Err(e) => problems.push(e),
                }
                if setup.sources.is_empty() {
                    problems.push("no certificate file found in the paths given".to_owned());
                }
            }
            let files = setup.installed.iter().map(|i| i.file.clone()).collect();
            configs.push(FrontendConfig::of(
                frontend,
                |service| self.backends.get(service).cloned(),
                layout.crt_list.clone(),
                files,
            ));
            report_install(&setup, &problems, status, metrics);
            self.setups.push(setup);
        }
        status.update(|s| {
            s.frontends
                .retain(|name, _| frontends.iter().any(|f| f.name() == name));
        });
        configs
    }

    /// The frontends as last installed.
    pub fn specs(&self) -> Vec<Frontend> {
        self.setups.iter().map(|s| s.frontend.clone()).collect()
    }

    pub fn backends(&self) -> BTreeMap<String, String> {
        self.backends.clone()
    }

    /// Reads every certificate file again: the ones whose content changed and passes
    /// are to be swapped; the ones that do not pass are reported (once per reason)
    /// while the installed copy keeps serving.
    pub fn changes(&mut self, status: &StatusHandle, metrics: &Metrics) -> Changes {
        let mut changes = Changes::default();
        for setup in &mut self.setups {
            let Some(t) = &setup.frontend.spec.tls else {
                continue;
            };
            let before = setup.invalid.clone();
            match tls::sources(&t.certificates) {
                Ok(now) if now != setup.sources => {
                    changes.reinstall = true;
                    continue;
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            for installed in &setup.installed {
                match tls::read(&installed.source) {
                    Ok(m) if m.digest == installed.digest => {
                        setup.invalid.remove(&installed.source);
                    }
                    Ok(m) => {
                        setup.invalid.remove(&installed.source);
                        changes.swaps.push(Swap {
                            frontend: setup.frontend.name().to_owned(),
                            file: installed.file.clone(),
                            pem: m.pem.clone(),
                            material: m,
                        });
                    }
                    Err(why) => {
                        if setup.invalid.get(&installed.source) != Some(&why) {
                            metrics
                                .certificate_swaps_total
                                .with_label_values(&["invalid"])
                                .inc();
                            report_invalid(setup, &installed.source, &why, status);
                            setup.invalid.insert(installed.source.clone(), why);
                        }
                    }
                }
            }
            // A file left out at install that passes now: install it (a reload).
            let rejected: Vec<Source> = setup
                .invalid
                .keys()
                .filter(|s| !setup.installed.iter().any(|i| &i.source == *s))
                .cloned()
                .collect();
            if rejected.iter().any(|s| tls::read(s).is_ok()) {
                changes.reinstall = true;
            }
            if setup.invalid != before {
                report_valid(setup, status);
            }
        }
        changes
    }

    /// A swap was carried out (`Ok`) or HAProxy refused it (`Err`, its words).
    pub fn swapped(
        &mut self,
        swap: Swap,
        result: Result<(), String>,
        status: &StatusHandle,
        metrics: &Metrics,
    ) {
        let Some(setup) = self
            .setups
            .iter_mut()
            .find(|s| s.frontend.name() == swap.frontend)
        else {
            return;
        };
        let Some(installed) = setup.installed.iter_mut().find(|i| i.file == swap.file) else {
            return;
        };
        let label = installed.source.label();
        let now = SystemTime::now();
        let result = result.and_then(|()| tls::rewrite(installed, &swap.pem));
        match result {
            Ok(()) => {
                installed.digest = swap.material.digest;
                installed.info = swap.material.info;
                metrics
                    .certificate_swaps_total
                    .with_label_values(&["ok"])
                    .inc();
                let message = format!(
                    "certificate {label} changed on disk: swapped into HAProxy without a \
                     reload (names {}, expires {})",
                    installed.info.names.join(", "),
                    humantime::format_rfc3339_seconds(expiry(installed.info.not_after)),
                );
                update(status, setup, |f| {
                    f.record(EventType::Normal, "CertificateSwapped", message, now);
                });
            }
            Err(why) => {
                metrics
                    .certificate_swaps_total
                    .with_label_values(&["failed"])
                    .inc();
                let message = format!(
                    "certificate {label} changed on disk but HAProxy refused it ({why}): the \
                     previous one keeps serving"
                );
                setup.invalid.insert(installed.source.clone(), why);
                update(status, setup, |f| {
                    f.record(EventType::Warning, "CertificateRejected", message, now);
                });
            }
        }
        report_valid(setup, status);
        set_expiry_metrics(setup, metrics);
    }
}

fn expiry(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

/// Writes a frontend's status: binds and certificates, then `edit`.
fn update(status: &StatusHandle, setup: &Setup, edit: impl FnOnce(&mut FrontendStatus)) {
    let name = setup.frontend.name().to_owned();
    let certificates: Vec<CertificateStatus> = setup
        .installed
        .iter()
        .map(|i| CertificateStatus {
            file: i.source.label(),
            names: i.info.names.clone(),
            not_after: expiry(i.info.not_after),
            error: setup.invalid.get(&i.source).cloned(),
        })
        .collect();
    let binds = setup
        .frontend
        .spec
        .bind
        .iter()
        .chain(&setup.frontend.spec.redirect_from)
        .map(ToString::to_string)
        .collect();
    status.update(|s| {
        let f = s.frontends.entry(name.clone()).or_default();
        f.name = name;
        f.binds = binds;
        f.certificates = certificates;
        edit(f);
    });
}

fn set_expiry_metrics(setup: &Setup, metrics: &Metrics) {
    for i in &setup.installed {
        metrics
            .certificate_expiry_timestamp_seconds
            .with_label_values(&[setup.frontend.name(), &i.source.label()])
            .set(i.info.not_after as f64);
    }
}

fn report_install(setup: &Setup, problems: &[String], status: &StatusHandle, metrics: &Metrics) {
    set_expiry_metrics(setup, metrics);
    let now = SystemTime::now();
    let tls = setup.frontend.spec.tls.is_some();
    update(status, setup, |f| {
        for problem in problems {
            f.record(
                EventType::Warning,
                "CertificateInvalid",
                format!("{problem}: left out (a copy installed before keeps serving)"),
                now,
            );
        }
        if tls && setup.installed.is_empty() {
            f.set_condition(
                ConditionType::CertificatesValid,
                false,
                "NoValidCertificate",
                "no certificate passes its check: the TLS addresses do not listen",
                now,
            );
        }
    });
    if !(tls && setup.installed.is_empty()) {
        report_valid(setup, status);
    }
}

fn report_invalid(setup: &Setup, source: &Source, why: &str, status: &StatusHandle) {
    let message = format!(
        "certificate {} changed on disk but {why}: the previous one keeps serving",
        source.label()
    );
    update(status, setup, |f| {
        f.record(
            EventType::Warning,
            "CertificateInvalid",
            message,
            SystemTime::now(),
        );
    });
}

/// The `CertificatesValid` condition from what is invalid now.
fn report_valid(setup: &Setup, status: &StatusHandle) {
    if setup.frontend.spec.tls.is_none() {
        return;
    }
    let now = SystemTime::now();
    let (ok, reason, message) = match setup.invalid.iter().next() {
        None => (
            true,
            "Valid",
            format!("{} certificate(s) served", setup.installed.len()),
        ),
        Some((source, why)) => (
            false,
            "CertificateInvalid",
            format!(
                "{}: {why} (the previous copy keeps serving)",
                source.label()
            ),
        ),
    };
    update(status, setup, |f| {
        f.set_condition(ConditionType::CertificatesValid, ok, reason, &message, now);
    });
}
