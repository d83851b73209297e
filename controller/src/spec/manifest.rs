//! Reading spec files and directories into validated [`ScaledService`]s.
//!
//! This module owns the user's view of errors: every problem is a [`SpecError`] carrying
//! the file, line and column it points at, so `dockscale validate` and the controller's
//! logs can print `file:line:col: message`. It reads files but never acts on them; a
//! failed load returns errors and no services, and the caller keeps its last good spec.
//!
//! A YAML stream is split into documents at `---`/`...` lines (YAML reserves those at
//! the start of a line, even inside scalars), and each document is parsed on its own so
//! that one bad document does not hide the errors of the next. Each document is read
//! twice: into the typed spec (syntax, unknown fields, types and per-value rules come
//! located from serde-saphyr), and into a span-carrying tree used to locate the
//! cross-field rules checked here.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::spec::frontend::{Frontend, FRONTEND_KIND};
use crate::spec::options::{is_volume_name, parse_env_file};
use crate::spec::{Mount, MountType, Runtime, ScaledService, Template};

/// A located problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based line and column; `None` for file-level problems (unreadable, missing).
    pub position: Option<(u64, u64)>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for SpecError {}

/// All the errors of one load, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// A service and where its document starts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedService {
    pub service: ScaledService,
    pub file: PathBuf,
    pub line: u64,
}

/// A frontend and where its document starts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedFrontend {
    /// Its certificate paths are absolute (relative ones resolved from the file).
    pub frontend: Frontend,
    pub file: PathBuf,
    pub line: u64,
}

/// Every document of a spec: the services and the frontends in front of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub services: Vec<LoadedService>,
    pub frontends: Vec<LoadedFrontend>,
}

/// Loads every spec under `paths` (files, or directories of `*.yaml`/`*.yml`) and
/// validates them together. Either all services or all errors: a partial result would
/// let the controller delete what an unparsable document describes.
pub fn load(paths: &[PathBuf]) -> Result<Vec<LoadedService>, SpecErrors> {
    load_for(paths, Runtime::Docker)
}

/// [`load`], with the rules of the runtime that will run the services: a field that
/// means nothing there is an error where it is written.
pub fn load_for(paths: &[PathBuf], runtime: Runtime) -> Result<Vec<LoadedService>, SpecErrors> {
    load_all(paths, runtime).map(|l| l.services)
}

/// [`load_for`], with the `Frontend` documents too.
pub fn load_all(paths: &[PathBuf], runtime: Runtime) -> Result<Loaded, SpecErrors> {
    let mut docs = Docs::default();
    let mut errors = Vec::new();
    if paths.is_empty() {
        errors.push(SpecError {
            file: PathBuf::from("."),
            position: None,
            message: "no spec path given".to_owned(),
        });
    }
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match spec_files_in(path) {
                Ok(files) => {
                    for file in files {
                        read_file(&file, Origin::Directory, &mut docs, &mut errors);
                    }
                }
                Err(e) => errors.push(file_error(path, format!("cannot read directory: {e}"))),
            },
            Ok(_) => read_file(path, Origin::Explicit, &mut docs, &mut errors),
            Err(e) => errors.push(file_error(path, format!("cannot read: {e}"))),
        }
    }
    let parsed_ok = errors.is_empty();
    check_unique(&docs.services, &mut errors);
    check_runtime(&docs.services, runtime, &mut errors);
    check_frontends(&docs, &mut errors);
    check_certificate_paths(&docs.frontends, &mut errors);
    if parsed_ok && errors.is_empty() {
        Ok(docs.into_loaded())
    } else {
        Err(SpecErrors(errors))
    }
}

/// The files of a directory that may hold specs, sorted: `*.yaml` and `*.yml`, not
/// hidden (editors keep swap and backup files as dotfiles), not recursive.
pub fn spec_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Named on the command line: every document must be a dockscale spec.
    Explicit,
    /// Found in a directory: files with no dockscale document (a `prometheus.yml`
    /// beside the specs) are skipped.
    Directory,
}

fn file_error(file: &Path, message: String) -> SpecError {
    SpecError {
        file: file.to_owned(),
        position: None,
        message,
    }
}

fn read_file(file: &Path, origin: Origin, docs: &mut Docs, errors: &mut Vec<SpecError>) {
    let text = match std::fs::read(file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                errors.push(file_error(file, format!("not UTF-8 text: {e}")));
                return;
            }
        },
        Err(e) => {
            errors.push(file_error(file, format!("cannot read: {e}")));
            return;
        }
    };
    if origin == Origin::Directory && !mentions_dockscale(&text) {
        tracing::debug!(file = %file.display(), "skipping file without a dockscale document");
        return;
    }
    let (mut found, mut errs) = parse_documents(file, &text);
    for parsed in &mut found.services {
        read_env_file(file, parsed, errors);
    }
    docs.services.extend(found.services);
    docs.frontends.extend(found.frontends);
    errors.append(&mut errs);
}

/// Merges a service's `envFile` into its `env` (its own `env` wins) and clears it: what
/// the runtime sees, and what the template hash covers, is the effective environment.
/// The path is relative to the spec file's directory.
fn read_env_file(spec_file: &Path, parsed: &mut Parsed, errors: &mut Vec<SpecError>) {
    let template = &mut parsed.loaded.service.spec.template;
    let Some(relative) = template.env_file.take() else {
        return;
    };
    let path = spec_file.parent().unwrap_or(Path::new(".")).join(&relative);
    let read = std::fs::read(&path)
        .map_err(|e| format!("cannot read envFile `{}`: {e}", path.display()))
        .and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| format!("envFile `{}` is not UTF-8 text", path.display()))
        })
        .and_then(|text| {
            parse_env_file(&text).map_err(|(line, message)| {
                format!("envFile `{}` line {line}: {message}", path.display())
            })
        });
    match read {
        Ok(vars) => {
            for (name, value) in vars {
                template.env.entry(name).or_insert(value);
            }
        }
        Err(message) => {
            let position = parsed.position(&["spec", "template", "envFile"]);
            errors.push(SpecError {
                file: spec_file.to_owned(),
                position: Some(position),
                message,
            });
        }
    }
}

/// Whether any document of the text declares a dockscale `apiVersion`. Decided on the
/// raw text so that a foreign file with YAML this parser rejects is still skipped.
fn mentions_dockscale(text: &str) -> bool {
    text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("apiVersion:")
            .is_some_and(|v| v.trim().trim_matches(['"', '\'']).starts_with("dockscale/"))
    })
}

/// Parses every document of one file. Pure: the file name only labels the errors, and
/// an `envFile` is left unread (only [`load`] reads files).
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<LoadedService>, SpecErrors> {
    parse_all(file, text).map(|l| l.services)
}

/// [`parse_str`], with the `Frontend` documents too (certificate paths are not checked
/// on disk: that is [`load_all`]'s).
pub fn parse_all(file: &Path, text: &str) -> Result<Loaded, SpecErrors> {
    let (found, mut errors) = parse_documents(file, text);
    check_unique(&found.services, &mut errors);
    check_frontends(&found, &mut errors);
    if errors.is_empty() {
        Ok(found.into_loaded())
    } else {
        Err(SpecErrors(errors))
    }
}

/// The documents parsed so far, with their span trees.
#[derive(Default)]
struct Docs {
    services: Vec<Parsed>,
    frontends: Vec<ParsedFrontend>,
}

impl Docs {
    fn into_loaded(self) -> Loaded {
        Loaded {
            services: self.services.into_iter().map(|p| p.loaded).collect(),
            frontends: self.frontends.into_iter().map(|p| p.loaded).collect(),
        }
    }
}

/// A parsed frontend document, as [`Parsed`] is for a service.
struct ParsedFrontend {
    loaded: LoadedFrontend,
    tree: Spanned<Node>,
    first_line: u64,
}

impl ParsedFrontend {
    fn position(&self, path: &[&str]) -> (u64, u64) {
        let (line, col) = locate(&self.tree, path);
        (line + self.first_line - 1, col)
    }

    fn error(&self, path: &[&str], message: String) -> SpecError {
        SpecError {
            file: self.loaded.file.clone(),
            position: Some(self.position(path)),
            message,
        }
    }

    /// `file:line:col` of a value, for messages that point at a second place.
    fn at(&self, path: &[&str]) -> String {
        let (line, col) = self.position(path);
        format!("{}:{line}:{col}", self.loaded.file.display())
    }
}

/// Only the `kind` of a document, to pick its type.
#[derive(Deserialize)]
struct KindProbe {
    #[serde(default)]
    kind: Option<String>,
}

/// Whether a document is a `Frontend` (anything else is read as a `ScaledService`,
/// whose errors then say what is wrong).
fn is_frontend(text: &str) -> bool {
    serde_saphyr::from_str::<KindProbe>(text)
        .ok()
        .and_then(|p| p.kind)
        .is_some_and(|k| k == FRONTEND_KIND)
}

/// A parsed document: the service, its span tree and the line the document starts on.
struct Parsed {
    loaded: LoadedService,
    tree: Spanned<Node>,
    first_line: u64,
}

impl Parsed {
    /// File position of the value at `path`.
    fn position(&self, path: &[&str]) -> (u64, u64) {
        let (line, col) = locate(&self.tree, path);
        (line + self.first_line - 1, col)
    }
}

fn parse_documents(file: &Path, text: &str) -> (Docs, Vec<SpecError>) {
    let mut docs = Docs::default();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        let at = |line: u64, col: u64, message: String| SpecError {
            file: file.to_owned(),
            position: Some((line + doc.first_line - 1, col)),
            message,
        };
        // The span tree first: it accepts any YAML, so a failure here is a syntax error.
        let tree: Spanned<Node> = match serde_saphyr::from_str(doc.text) {
            Ok(tree) => tree,
            Err(e) => {
                errors.push(yaml_error(&e, &at));
                continue;
            }
        };
        if matches!(tree.value, Node::Null) {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let line = doc.first_line + tree.referenced.line().max(1) - 1;
        if is_frontend(doc.text) {
            match serde_saphyr::from_str::<Frontend>(doc.text) {
                Ok(mut frontend) => {
                    resolve_certificates(&mut frontend, file);
                    docs.frontends.push(ParsedFrontend {
                        loaded: LoadedFrontend {
                            frontend,
                            file: file.to_owned(),
                            line,
                        },
                        tree,
                        first_line: doc.first_line,
                    });
                }
                Err(e) => errors.push(yaml_error(&e, &at)),
            }
            continue;
        }
        let service: ScaledService = match serde_saphyr::from_str(doc.text) {
            Ok(service) => service,
            Err(e) => {
                errors.push(yaml_error(&e, &at));
                continue;
            }
        };
        let located = |path: &[&str], message: String| {
            let (line, col) = locate(&tree, path);
            at(line, col, message)
        };
        for (path, message) in check_service(&service) {
            errors.push(located(&path, message));
        }
        for (path, message) in check_schedules(&service.spec) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            errors.push(located(&path, message));
        }
        for (path, message) in check_rollout(&service.spec) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            errors.push(located(&path, message));
        }
        for (path, message) in check_options(&service.spec.template) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            errors.push(located(&path, message));
        }
        docs.services.push(Parsed {
            loaded: LoadedService {
                service,
                file: file.to_owned(),
                line,
            },
            tree,
            first_line: doc.first_line,
        });
    }
    (docs, errors)
}

/// Relative certificate paths are from the spec file's directory.
fn resolve_certificates(frontend: &mut Frontend, file: &Path) {
    let dir = file.parent().unwrap_or(Path::new("."));
    for path in frontend
        .spec
        .tls
        .iter_mut()
        .flat_map(|t| &mut t.certificates)
    {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    }
}

fn yaml_error(e: &serde_saphyr::Error, at: &dyn Fn(u64, u64, String) -> SpecError) -> SpecError {
    let (line, col) = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column().max(1)))
        .unwrap_or((1, 1));
    at(line, col, yaml_message(e))
}

/// serde-saphyr's message without its source snippet and location suffix (we print the
/// location in front, compiler style).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let rendered = e.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML").trim();
    let trimmed = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    trimmed.to_owned()
}

/// One document of a YAML stream, with the line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: u64,
}

/// Splits a stream at document markers. YAML forbids `---` and `...` followed by a
/// space or line end at the start of a line anywhere but as markers, so splitting on
/// lines is exact.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    fn is_marker(line: &str) -> bool {
        let line = line.trim_end_matches(['\r', '\n']);
        ["---", "..."].iter().any(|m| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
    }
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        if is_marker(line) {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            // `--- {inline: doc}` keeps content on the marker line: start the next
            // document at the marker line itself, with the marker blanked out.
            start = offset + line.len();
            start_line = line_no + 1;
            let rest = line[3..].trim();
            if line.starts_with("---") && !rest.is_empty() && !rest.starts_with('#') {
                docs.push(Document {
                    text: &line[3..],
                    first_line: line_no,
                });
            }
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| !d.text.trim().is_empty());
    docs
}

/// `target` or `targets` (not both, not neither), tolerances within `[0, 1]`, and a
/// fallback count within the bounds.
fn check_autoscale_signals(a: &crate::spec::Autoscale) -> Vec<(Vec<&'static str>, String)> {
    let mut out = Vec::new();
    match (&a.target, a.targets.is_empty()) {
        (Some(_), false) => out.push((
            vec!["spec", "autoscale", "targets"],
            "give `target` or `targets`, not both".to_owned(),
        )),
        (None, true) => out.push((
            vec!["spec", "autoscale"],
            "autoscale needs `target` or a non-empty `targets` list".to_owned(),
        )),
        _ => {}
    }
    for (dir, t) in [
        ("scaleUp", a.tolerance.scale_up()),
        ("scaleDown", a.tolerance.scale_down()),
    ] {
        if !(0.0..=1.0).contains(&t) {
            let path = match a.tolerance {
                crate::spec::Tolerance::Both(_) => vec!["spec", "autoscale", "tolerance"],
                crate::spec::Tolerance::PerDirection(_) => {
                    vec!["spec", "autoscale", "tolerance", dir]
                }
            };
            out.push((path, format!("tolerance {t} must be from 0 to 1")));
        }
    }
    if let Some(f) = &a.fallback {
        if f.after.get().is_zero() {
            out.push((
                vec!["spec", "autoscale", "fallback", "after"],
                "fallback.after must be above 0s".to_owned(),
            ));
        }
        if let Some(r) = f.replicas {
            if !(a.min_replicas..=a.max_replicas).contains(&r) {
                out.push((
                    vec!["spec", "autoscale", "fallback", "replicas"],
                    format!(
                        "fallback.replicas ({r}) must be within minReplicas ({}) and maxReplicas ({})",
                        a.min_replicas, a.max_replicas
                    ),
                ));
            }
        }
    }
    out
}

/// `minReplicas: 0` and `scaleToZero` go together; the idle delay is above zero and
/// the activation timeout within what the managed HAProxy's timeouts allow.
fn check_scale_to_zero(a: &crate::spec::Autoscale) -> Vec<(Vec<&'static str>, String)> {
    let mut out = Vec::new();
    match (&a.scale_to_zero, a.min_replicas) {
        (None, 0) => out.push((
            vec!["spec", "autoscale", "minReplicas"],
            "minReplicas: 0 needs `scaleToZero` (`scaleToZero: {}` for the defaults): \
             without it nothing would hold the requests that arrive while no replica runs"
                .to_owned(),
        )),
        (Some(_), min) if min > 0 => out.push((
            vec!["spec", "autoscale", "scaleToZero"],
            format!("scaleToZero needs minReplicas: 0 (it is {min})"),
        )),
        _ => {}
    }
    if let Some(z) = &a.scale_to_zero {
        if z.idle_after.get().is_zero() {
            out.push((
                vec!["spec", "autoscale", "scaleToZero", "idleAfter"],
                "idleAfter must be above 0s".to_owned(),
            ));
        }
        let timeout = z.activation_timeout.get();
        if !(std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(60))
            .contains(&timeout)
        {
            out.push((
                vec!["spec", "autoscale", "scaleToZero", "activationTimeout"],
                format!(
                    "activationTimeout {} must be from 100ms to 60s (HAProxy's client \
                     timeout bounds how long a request can be held)",
                    z.activation_timeout
                ),
            ));
        }
    }
    out
}
/// `autoscale.warmPool`: no more warm containers than replicas may ever run, and not
/// so many that the paused containers' memory becomes the host's problem.
fn check_warm_pool(a: &crate::spec::Autoscale) -> Vec<(Vec<&'static str>, String)> {
    let Some(pool) = &a.warm_pool else {
        return Vec::new();
    };
    let at = vec!["spec", "autoscale", "warmPool", "size"];
    if pool.size > crate::spec::WarmPool::MAX_SIZE {
        vec![(
            at,
            format!(
                "warmPool.size ({}) is above {}: each warm container keeps its memory while \
                 it waits",
                pool.size,
                crate::spec::WarmPool::MAX_SIZE
            ),
        )]
    } else if pool.size > a.max_replicas {
        vec![(
            at,
            format!(
                "warmPool.size ({}) is greater than maxReplicas ({}): a scale-up never takes \
                 more than maxReplicas",
                pool.size, a.max_replicas
            ),
        )]
    } else {
        Vec::new()
    }
}

/// `autoscale.schedules`: windows that last, with a floor the bounds allow. (The cron
/// expression and the time zone were checked when they were read.)
fn check_schedules(spec: &crate::spec::ServiceSpec) -> Vec<(Vec<String>, String)> {
    let Some(a) = &spec.autoscale else {
        return Vec::new();
    };
    let at = |i: usize, field: &str| -> Vec<String> {
        ["spec", "autoscale", "schedules", &i.to_string(), field]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    let mut out = Vec::new();
    for (i, s) in a.schedules.iter().enumerate() {
        // A year and a day: longer is a minimum, not a schedule (and keeps the end of
        // every window a date that status can print).
        const LONGEST: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);
        if s.duration.get().is_zero() {
            out.push((
                at(i, "duration"),
                format!(
                    "duration must be above 0s: the window opened by \"{}\" would close at once",
                    s.cron
                ),
            ));
        } else if s.duration.get() > LONGEST {
            out.push((
                at(i, "duration"),
                format!(
                    "duration {} is longer than 366d: for a floor that always holds, raise \
                     minReplicas",
                    s.duration
                ),
            ));
        }
        if s.min_replicas > a.max_replicas {
            out.push((
                at(i, "minReplicas"),
                format!(
                    "the schedule's minReplicas ({}) is greater than maxReplicas ({})",
                    s.min_replicas, a.max_replicas
                ),
            ));
        }
    }
    out
}

/// Rules that span several fields of one service. Returns `(path, message)` pairs; the
/// path locates the message in the document.
fn check_service(s: &ScaledService) -> Vec<(Vec<&'static str>, String)> {
    let spec = &s.spec;
    let mut out = Vec::new();
    if let Some(a) = &spec.autoscale {
        if a.min_replicas > a.max_replicas {
            out.push((
                vec!["spec", "autoscale", "minReplicas"],
                format!(
                    "minReplicas ({}) is greater than maxReplicas ({})",
                    a.min_replicas, a.max_replicas
                ),
            ));
        }
        if spec.replicas > a.max_replicas {
            out.push((
                vec!["spec", "replicas"],
                format!(
                    "replicas ({}) is greater than autoscale.maxReplicas ({})",
                    spec.replicas, a.max_replicas
                ),
            ));
        }
        if spec.load_balancer.is_none() {
            out.push((
                vec!["spec", "autoscale"],
                "autoscale needs a loadBalancer: demand is read from the HAProxy backend"
                    .to_owned(),
            ));
        }
        out.extend(check_autoscale_signals(a));
        out.extend(check_scale_to_zero(a));
        out.extend(check_warm_pool(a));
        for (dir, rules) in [
            ("scaleUp", &a.behavior.scale_up),
            ("scaleDown", &a.behavior.scale_down),
        ] {
            if rules.period.get().is_zero() {
                out.push((
                    vec!["spec", "autoscale", "behavior", dir, "period"],
                    "period must be above 0s".to_owned(),
                ));
            }
        }
    }
    if let Some(lb) = &spec.load_balancer {
        if spec.template.port.is_none() {
            out.push((
                vec!["spec", "loadBalancer"],
                "loadBalancer needs spec.template.port: the port HAProxy sends traffic to"
                    .to_owned(),
            ));
        }
        if lb.server.weight == 0 || lb.server.weight > 256 {
            out.push((
                vec!["spec", "loadBalancer", "server", "weight"],
                format!("weight ({}) must be between 1 and 256", lb.server.weight),
            ));
        }
        if let Some(h) = &lb.health_check {
            if !lb.server.check {
                out.push((
                    vec!["spec", "loadBalancer", "healthCheck"],
                    "healthCheck needs server.check: true (it is what HAProxy's checks send)"
                        .to_owned(),
                ));
            }
            for (field, value) in [("interval", h.interval), ("timeout", h.timeout)] {
                if value.get().is_zero() {
                    out.push((
                        vec!["spec", "loadBalancer", "healthCheck", field],
                        format!("{field} must be above 0s"),
                    ));
                }
            }
        }
        if lb.server.maxconn == Some(0) {
            out.push((
                vec!["spec", "loadBalancer", "server", "maxconn"],
                "maxconn must be at least 1 (leave it out for no limit)".to_owned(),
            ));
        }
    }
    if spec.template.port == Some(0) {
        out.push((
            vec!["spec", "template", "port"],
            "port must be between 1 and 65535".to_owned(),
        ));
    }
    if spec.rollout.max_surge == 0 && spec.rollout.max_unavailable == 0 {
        out.push((
            vec!["spec", "rollout"],
            "maxSurge and maxUnavailable cannot both be 0: a rollout could never progress"
                .to_owned(),
        ));
    }
    if let Some(h) = &spec.template.healthcheck {
        out.extend(check_container_healthcheck(h));
    }
    for key in spec.template.labels.keys() {
        if key.starts_with("dockscale.") {
            out.push((
                vec!["spec", "template", "labels"],
                format!(
                    "label `{key}` is reserved: keys under `dockscale.` belong to the controller"
                ),
            ));
        }
    }
    out
}

/// A container health check Docker accepts: a command unless disabled, and periods of
/// at least 1ms (Docker's floor).
fn check_container_healthcheck(
    h: &crate::spec::ContainerHealthcheck,
) -> Vec<(Vec<&'static str>, String)> {
    let at = |field: &'static str| vec!["spec", "template", "healthcheck", field];
    let mut out = Vec::new();
    match (h.disable, h.command.is_empty()) {
        (false, true) => out.push((
            vec!["spec", "template", "healthcheck"],
            "healthcheck needs a command (or `disable: true` to turn off the image's)".to_owned(),
        )),
        (true, false) => out.push((
            at("command"),
            "a disabled healthcheck runs no command: remove one of the two".to_owned(),
        )),
        _ => {}
    }
    if h.command.first().is_some_and(|c| c.is_empty()) {
        out.push((at("command"), "the command's program is empty".to_owned()));
    }
    let floor = std::time::Duration::from_millis(1);
    for (field, value) in [("interval", h.interval), ("timeout", h.timeout)] {
        if value.get() < floor {
            out.push((at(field), format!("{field} must be at least 1ms")));
        }
    }
    if !h.start_period.is_zero() && h.start_period.get() < floor {
        out.push((
            at("startPeriod"),
            "startPeriod must be 0s or at least 1ms".to_owned(),
        ));
    }
    out
}

/// The rules of the template's mounts and ulimits that span fields. Paths may index
/// into sequences (`["spec", "template", "mounts", "0", "source"]`).
fn check_options(t: &Template) -> Vec<(Vec<String>, String)> {
    let at = |tail: &[&str]| -> Vec<String> {
        ["spec", "template"]
            .iter()
            .chain(tail)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let mut out = Vec::new();
    let mut targets: HashMap<&str, usize> = HashMap::new();
    for (i, mount) in t.mounts.iter().enumerate() {
        let index = i.to_string();
        for (field, message) in check_mount(mount) {
            out.push((at(&["mounts", &index, field]), message));
        }
        let target = mount.target.normalized();
        if let Some(first) = targets.get(target) {
            out.push((
                at(&["mounts", &index, "target"]),
                format!("duplicate mount target `{target}`: already mounted by mounts[{first}]"),
            ));
        } else {
            targets.insert(target, i);
        }
    }
    for (name, limit) in &t.ulimits {
        if limit.soft > limit.hard {
            out.push((
                at(&["ulimits", name.as_str(), "soft"]),
                format!(
                    "ulimit {name}: soft ({}) is above hard ({}): a process cannot start                      above its ceiling",
                    limit.soft, limit.hard
                ),
            ));
        }
    }
    out
}

/// The rollout's strategy, canary steps and analysis thresholds.
fn check_rollout(spec: &crate::spec::ServiceSpec) -> Vec<(Vec<String>, String)> {
    use crate::spec::Strategy;
    let at = |tail: &[&str]| -> Vec<String> {
        ["spec", "rollout"]
            .iter()
            .chain(tail)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let r = &spec.rollout;
    let mut out = Vec::new();
    match r.strategy {
        Strategy::Canary if spec.load_balancer.is_none() => out.push((
            at(&["strategy"]),
            "strategy canary needs a loadBalancer: traffic is split by HAProxy weights".to_owned(),
        )),
        Strategy::Rolling if !r.steps.is_empty() => out.push((
            at(&["steps"]),
            "steps are for strategy: canary (a rolling update has none)".to_owned(),
        )),
        _ => {}
    }
    let mut last = 0u8;
    for (i, step) in r.steps.iter().enumerate() {
        let index = i.to_string();
        if !(1..=99).contains(&step.weight) {
            out.push((
                at(&["steps", &index, "weight"]),
                format!(
                    "weight ({}) must be between 1 and 99 (percent)",
                    step.weight
                ),
            ));
        } else if step.weight <= last {
            out.push((
                at(&["steps", &index, "weight"]),
                format!(
                    "weight ({}) must be above the previous step's ({last}): steps increase",
                    step.weight
                ),
            ));
        }
        last = last.max(step.weight);
        if step.pause.get().is_zero() {
            out.push((
                at(&["steps", &index, "pause"]),
                "pause must be above 0s".to_owned(),
            ));
        }
    }
    if let Some(a) = &r.analysis {
        if a.interval.get().is_zero() {
            out.push((
                at(&["analysis", "interval"]),
                "interval must be above 0s".to_owned(),
            ));
        }
        if a.min_requests == 0 {
            out.push((
                at(&["analysis", "minRequests"]),
                "minRequests must be at least 1".to_owned(),
            ));
        }
        if !(0.0..=1.0).contains(&a.max_error_rate) {
            out.push((
                at(&["analysis", "maxErrorRate"]),
                format!(
                    "maxErrorRate ({}) must be between 0 and 1 (a fraction)",
                    a.max_error_rate
                ),
            ));
        }
        if a.max_response_time_ratio.is_nan() || a.max_response_time_ratio < 1.0 {
            out.push((
                at(&["analysis", "maxResponseTimeRatio"]),
                format!(
                    "maxResponseTimeRatio ({}) must be at least 1",
                    a.max_response_time_ratio
                ),
            ));
        }
        if spec.load_balancer.is_none() {
            out.push((
                at(&["analysis"]),
                "analysis needs a loadBalancer: it reads HAProxy's per-server counters".to_owned(),
            ));
        }
    }
    out
}

/// One mount's rules, as `(field, message)`.
fn check_mount(m: &Mount) -> Vec<(&'static str, String)> {
    let kind = m.kind.as_str();
    let mut out = Vec::new();
    if m.target.normalized() == "/" {
        out.push((
            "target",
            "a mount cannot replace `/`: use readOnlyRootFilesystem".to_owned(),
        ));
    }
    match (m.kind, m.source.as_deref()) {
        (MountType::Tmpfs, Some(_)) => out.push((
            "source",
            "a tmpfs has no source: it is memory, created empty".to_owned(),
        )),
        (MountType::Tmpfs, None) => {}
        (MountType::Bind, Some(source)) if !source.starts_with('/') => out.push((
            "source",
            format!("bind source `{source}` must be an absolute path on the engine's host"),
        )),
        (MountType::Volume, Some(source)) if !is_volume_name(source) => out.push((
            "source",
            format!(
                "`{source}` is not a volume name: use letters, digits, '_', '.' and '-',                  at least 2, starting with a letter or digit"
            ),
        )),
        (MountType::Bind | MountType::Volume, Some(_)) => {}
        (MountType::Bind, None) => {
            out.push(("type", "a bind mount needs a source: a host path".to_owned()))
        }
        (MountType::Volume, None) => out.push((
            "type",
            "a volume mount needs a source (a volume name): an anonymous volume would \
             be left behind by every replaced replica"
                .to_owned(),
        )),
    }
    if m.size.is_some() && m.kind != MountType::Tmpfs {
        out.push(("size", format!("size is for tmpfs mounts only, not {kind}")));
    }
    if m.read_only && m.kind == MountType::Tmpfs {
        out.push((
            "readOnly",
            "a tmpfs cannot be read-only: it starts empty".to_owned(),
        ));
    }
    out
}

/// Fields that mean nothing in the runtime that will run the service.
fn check_runtime(services: &[Parsed], runtime: Runtime, errors: &mut Vec<SpecError>) {
    for p in services {
        let spec = &p.loaded.service.spec;
        let mut wrong = |path: &[&str], message: String| {
            let (line, col) = p.position(path);
            errors.push(SpecError {
                file: p.loaded.file.clone(),
                position: Some((line, col)),
                message,
            });
        };
        match runtime {
            Runtime::Docker => {
                if spec.placement.is_some() {
                    wrong(
                        &["spec", "placement"],
                        "placement is for Swarm (run and validate with --runtime swarm): \
                         the docker runtime runs every replica on this engine"
                            .to_owned(),
                    );
                }
            }
            Runtime::Swarm => {
                if spec.rollout.strategy == crate::spec::Strategy::Canary {
                    wrong(
                        &["spec", "rollout", "strategy"],
                        "strategy: canary is for the docker runtime: Swarm rolls a service \
                         out through its own update machinery, task by task"
                            .to_owned(),
                    );
                } else if spec.rollout.analysis.is_some() {
                    wrong(
                        &["spec", "rollout", "analysis"],
                        "rollout.analysis is for the docker runtime: Swarm's update rolls \
                         back on failed tasks (failure_action: rollback), not on HAProxy's \
                         figures"
                            .to_owned(),
                    );
                }
                if spec
                    .autoscale
                    .as_ref()
                    .is_some_and(|a| a.warm_pool.is_some())
                {
                    wrong(
                        &["spec", "autoscale", "warmPool"],
                        "warmPool is for the docker runtime: Swarm cannot pause a task".to_owned(),
                    );
                }
                if spec.autoscale.as_ref().is_some_and(|a| a.min_replicas == 0) {
                    wrong(
                        &["spec", "autoscale", "minReplicas"],
                        "minReplicas: 0 (scale to zero) is for the docker runtime: the Swarm \
                         loop does not wake a service on a held request, so every request \
                         at zero would wait out activationTimeout"
                            .to_owned(),
                    );
                }
                if spec.template.unhealthy_replace_after.is_some() {
                    wrong(
                        &["spec", "template", "unhealthyReplaceAfter"],
                        "unhealthyReplaceAfter is for the docker runtime: Swarm replaces \
                         an unhealthy task itself, as soon as it turns unhealthy"
                            .to_owned(),
                    );
                }
                if spec.template.image_pull_policy == crate::spec::ImagePullPolicy::Never {
                    wrong(
                        &["spec", "template", "imagePullPolicy"],
                        "imagePullPolicy: Never is for the docker runtime: Swarm's nodes pull a \
                         missing image themselves (use IfNotPresent or Always)"
                            .to_owned(),
                    );
                }
                if let Some(max) = spec
                    .placement
                    .as_ref()
                    .and_then(|p| p.max_replicas_per_node)
                {
                    if max == 0 {
                        wrong(
                            &["spec", "placement", "maxReplicasPerNode"],
                            "maxReplicasPerNode must be at least 1 (leave it out for no limit)"
                                .to_owned(),
                        );
                    }
                }
                if spec.template.no_new_privileges {
                    wrong(
                        &["spec", "template", "noNewPrivileges"],
                        "noNewPrivileges is not supported by Swarm services on this \
                         engine (API 1.41 has no such task option): remove it, or run \
                         with --runtime docker"
                            .to_owned(),
                    );
                }
                for c in spec.placement.iter().flat_map(|p| &p.constraints) {
                    if !["==", "!="].iter().any(|op| c.contains(op)) {
                        wrong(
                            &["spec", "placement", "constraints"],
                            format!(
                                "constraint `{c}` has no `==` or `!=`: Swarm takes \
                                 `node.role==worker`, `node.labels.zone!=a`, ..."
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Names, backends and bind addresses must be unique across everything loaded.
fn check_unique(services: &[Parsed], errors: &mut Vec<SpecError>) {
    type Key = fn(&ScaledService) -> Option<String>;
    let keys: [(&str, &[&str], Key); 3] = [
        ("metadata.name", &["metadata", "name"], |s| {
            Some(s.name().to_owned())
        }),
        (
            "loadBalancer.backend",
            &["spec", "loadBalancer", "backend"],
            |s| {
                s.spec
                    .load_balancer
                    .as_ref()
                    .map(|lb| lb.backend.to_string())
            },
        ),
        (
            "loadBalancer.bind",
            &["spec", "loadBalancer", "bind"],
            |s| {
                s.spec
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| lb.bind)
                    .map(|b| b.to_string())
            },
        ),
    ];
    for (what, path, key) in keys {
        let mut seen: HashMap<String, (PathBuf, u64)> = HashMap::new();
        for parsed in services {
            let Some(value) = key(&parsed.loaded.service) else {
                continue;
            };
            let (line, col) = parsed.position(path);
            match seen.get(&value) {
                Some((first_file, first_line)) => errors.push(SpecError {
                    file: parsed.loaded.file.clone(),
                    position: Some((line, col)),
                    message: format!(
                        "duplicate {what} `{value}`: already used at {}:{first_line}",
                        first_file.display()
                    ),
                }),
                None => {
                    seen.insert(value, (parsed.loaded.file.clone(), line));
                }
            }
        }
    }
}

/// Rules across the frontends and the services they route to: unique names, every
/// address claimed once (a service's `bind`, a frontend's `bind` and `redirectFrom`),
/// routes only to services with a load balancer and no bind of their own, no two
/// routes of one frontend matching the same requests.
fn check_frontends(docs: &Docs, errors: &mut Vec<SpecError>) {
    let services: HashMap<&str, &Parsed> = docs
        .services
        .iter()
        .map(|p| (p.loaded.service.name(), p))
        .collect();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut binds: HashMap<std::net::SocketAddr, String> = HashMap::new();
    for p in &docs.services {
        if let Some(bind) = p
            .loaded
            .service
            .spec
            .load_balancer
            .as_ref()
            .and_then(|l| l.bind)
        {
            let (line, col) = p.position(&["spec", "loadBalancer", "bind"]);
            binds
                .entry(bind)
                .or_insert_with(|| format!("{}:{line}:{col}", p.loaded.file.display()));
        }
    }
    for f in &docs.frontends {
        let fe = &f.loaded.frontend;
        if let Some(first) = names.insert(fe.name(), f.at(&["metadata", "name"])) {
            errors.push(f.error(
                &["metadata", "name"],
                format!(
                    "duplicate frontend name `{}`: already used at {first}",
                    fe.name()
                ),
            ));
        }
        let claimed = fe
            .spec
            .bind
            .iter()
            .enumerate()
            .map(|(i, b)| ("bind", i, b))
            .chain(
                fe.spec
                    .redirect_from
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ("redirectFrom", i, b)),
            );
        for (field, i, bind) in claimed {
            let idx = i.to_string();
            let path = ["spec", field, idx.as_str()];
            match binds.get(bind) {
                Some(first) => errors.push(f.error(
                    &path,
                    format!("address {bind} is already claimed at {first}"),
                )),
                None => {
                    binds.insert(*bind, f.at(&path));
                }
            }
        }
        if !fe.spec.redirect_from.is_empty() && fe.spec.tls.is_none() {
            errors.push(f.error(
                &["spec", "redirectFrom"],
                "redirectFrom redirects to HTTPS: it needs tls".to_owned(),
            ));
        }
        if fe.spec.routes.is_empty() && fe.spec.default_service.is_none() {
            errors.push(f.error(
                &["spec"],
                "a frontend needs routes or a defaultService: it would answer every request 404"
                    .to_owned(),
            ));
        }
        for (i, route) in fe.spec.routes.iter().enumerate() {
            let idx = i.to_string();
            let path = ["spec", "routes", idx.as_str(), "service"];
            if let Some(message) = routable(&services, route.service.as_str()) {
                errors.push(f.error(&path, message));
            }
        }
        if let Some(default) = &fe.spec.default_service {
            if let Some(message) = routable(&services, default.as_str()) {
                errors.push(f.error(&["spec", "defaultService"], message));
            }
        }
        check_ties(f, errors);
    }
}

/// Why a frontend cannot route to the service named `name`, if it cannot.
fn routable(services: &HashMap<&str, &Parsed>, name: &str) -> Option<String> {
    let Some(p) = services.get(name) else {
        return Some(format!("no service named `{name}` in the spec"));
    };
    match &p.loaded.service.spec.load_balancer {
        None => Some(format!(
            "service `{name}` has no loadBalancer: a frontend routes to its backend"
        )),
        Some(lb) => lb.bind.map(|bind| {
            let (line, _) = p.position(&["spec", "loadBalancer", "bind"]);
            format!(
                "service `{name}` has its own bind {bind} ({}:{line}): a routed service \
                 has a loadBalancer without bind",
                p.loaded.file.display()
            )
        }),
    }
}

/// Two routes of a frontend that match the same requests: an error at each, naming the
/// other.
fn check_ties(f: &ParsedFrontend, errors: &mut Vec<SpecError>) {
    let routes = &f.loaded.frontend.spec.routes;
    for (i, a) in routes.iter().enumerate() {
        for (j, b) in routes.iter().enumerate() {
            if i == j || a.key() != b.key() {
                continue;
            }
            let (ai, bj) = (i.to_string(), j.to_string());
            errors.push(f.error(
                &["spec", "routes", ai.as_str()],
                format!(
                    "this route matches the same requests as the route at {} (same host \
                     and path prefix): make one more specific or remove it",
                    f.at(&["spec", "routes", bj.as_str()])
                ),
            ));
        }
    }
}

/// Every certificate path exists (a file, or a directory of PEM files).
fn check_certificate_paths(frontends: &[ParsedFrontend], errors: &mut Vec<SpecError>) {
    for f in frontends {
        let certificates = f
            .loaded
            .frontend
            .spec
            .tls
            .iter()
            .flat_map(|t| &t.certificates);
        for (i, path) in certificates.enumerate() {
            if let Err(e) = std::fs::metadata(path) {
                let idx = i.to_string();
                errors.push(f.error(
                    &["spec", "tls", "certificates", idx.as_str()],
                    format!("cannot read certificate path {}: {e}", path.display()),
                ));
            }
        }
    }
}

/// Any YAML value, with the location of every mapping value. Used only to point
/// errors at the right place.
#[derive(Debug, Clone)]
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
    Null,
}

/// The line and column (relative to the document) of the value at `path`, or of its
/// nearest existing parent.
fn locate(tree: &Spanned<Node>, path: &[&str]) -> (u64, u64) {
    {
        let mut here = tree;
        // A sequence's items are reached by their index (`"0"`, `"1"`, ...).
        for key in path {
            let next = match &here.value {
                Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                Node::Seq(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                Node::Scalar | Node::Null => None,
            };
            match next {
                Some(v) => here = v,
                None => break,
            }
        }
        (
            here.referenced.line().max(1),
            here.referenced.column().max(1),
        )
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<KeyText>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    entries.push((key.0, value));
                }
                Ok(Node::Map(entries))
            }
        }

        d.deserialize_any(NodeVisitor)
    }
}

/// A mapping key of any scalar type, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyText, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(KeyText(String::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyText, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(KeyText(String::new()))
            }
        }

        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Target;

    const GOOD: &str = "\
apiVersion: dockscale/v1alpha1
kind: ScaledService
metadata:
  name: web
spec:
  replicas: 2
  template:
    image: dockscale-webapp:latest
    port: 8080
  loadBalancer:
    backend: web
    bind: 127.0.0.1:8080
  autoscale:
    minReplicas: 1
    maxReplicas: 4
    target: {inflightPerReplica: 8}
";

    /// The `autoscale` of the one service in a valid spec.
    fn autoscale_of(text: &str) -> crate::spec::Autoscale {
        let services = parse_str(Path::new("s.yaml"), text).expect("valid");
        services[0]
            .service
            .spec
            .autoscale
            .clone()
            .expect("autoscale")
    }

    fn errors(text: &str) -> Vec<String> {
        match parse_str(Path::new("s.yaml"), text) {
            Ok(services) => panic!("accepted: {services:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// A spec with services `web` (its own bind 127.0.0.1:8080) and `api` (routed),
    /// then `frontend` (the frontend's `spec:` body).
    fn with_frontend(frontend: &str) -> String {
        format!(
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: web}}\n\
             spec: {{template: {{image: x, port: 80}}, loadBalancer: {{backend: web, bind: \
             127.0.0.1:8080}}}}\n\
             ---\n\
             apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: api}}\n\
             spec: {{template: {{image: x, port: 80}}, loadBalancer: {{backend: api}}}}\n\
             ---\n\
             apiVersion: dockscale/v1alpha1\nkind: Frontend\nmetadata: {{name: public}}\n\
             spec:\n{frontend}"
        )
    }

    #[test]
    fn a_frontend_routes_only_to_routable_services_and_claims_its_own_addresses() {
        let loaded = parse_all(
            Path::new("s.yaml"),
            &with_frontend(
                "  bind: [127.0.0.1:8443]\n  routes: [{host: a.example.com, service: api}]\n",
            ),
        )
        .expect("valid");
        assert_eq!(loaded.frontends.len(), 1);
        assert_eq!(loaded.frontends[0].line, 11);

        let errs = errors(&with_frontend(
            "  bind: [127.0.0.1:8080]\n  routes:\n    - {host: a.example.com, service: web}\n\
             \x20   - {host: b.example.com, service: nope}\n  redirectFrom: [127.0.0.1:8081]\n",
        ));
        let text = errs.join("\n");
        assert!(
            text.contains("s.yaml:15:10: address 127.0.0.1:8080 is already claimed at s.yaml:4:"),
            "{text}"
        );
        assert!(
            text.contains("s.yaml:17:38: service `web` has its own bind"),
            "{text}"
        );
        assert!(
            text.contains("s.yaml:18:38: no service named `nope`"),
            "{text}"
        );
        assert!(
            text.contains("redirectFrom redirects to HTTPS: it needs tls"),
            "{text}"
        );
    }

    #[test]
    fn two_routes_matching_the_same_requests_are_reported_at_both() {
        let errs = errors(&with_frontend(
            "  bind: [127.0.0.1:8443]\n  routes:\n\
             \x20   - {host: A.example.com, pathPrefix: /v1/, service: api}\n\
             \x20   - {host: a.example.com, pathPrefix: /v1, service: api}\n",
        ));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "s.yaml:17:7: this route matches the same requests as the route at s.yaml:18:7"
            ),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with(
                "s.yaml:18:7: this route matches the same requests as the route at s.yaml:17:7"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn a_frontend_that_routes_nothing_or_names_a_bad_host_is_refused() {
        assert!(one_error(&with_frontend("  bind: [127.0.0.1:8443]\n"))
            .contains("needs routes or a defaultService"));
        assert!(one_error(&with_frontend(
            "  bind: [127.0.0.1:8443]\n  routes: [{host: \"a.*.com\", service: api}]\n"
        ))
        .contains("is not a host name"));
    }

    fn one_error(text: &str) -> String {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().expect("one")
    }

    #[test]
    fn a_good_spec_parses_with_its_defaults() {
        let services = parse_str(Path::new("s.yaml"), GOOD).expect("valid");
        let s = &services[0].service;
        assert_eq!(s.name(), "web");
        assert_eq!(s.spec.network.as_str(), "dockscale");
        assert!(s.spec.template.init);
        assert_eq!(s.spec.template.stop_grace_period.get().as_secs(), 10);
        assert_eq!(s.spec.rollout.max_surge, 1);
        let lb = s.spec.load_balancer.as_ref().expect("lb");
        assert_eq!(lb.drain_timeout.get().as_secs(), 30);
        assert!(lb.server.check);
        assert_eq!(services[0].line, 1);
    }

    #[test]
    fn a_canary_rollout_reads_with_its_analysis_defaults() {
        let text = format!(
            "{GOOD}  rollout:\n    strategy: canary\n    steps:\n      \
             - {{weight: 10, pause: 60s}}\n      - {{weight: 50, pause: 2m}}\n"
        );
        let services = parse_str(Path::new("s.yaml"), &text).expect("valid");
        let spec = &services[0].service.spec;
        let r = &spec.rollout;
        assert_eq!(r.strategy, crate::spec::Strategy::Canary);
        assert_eq!(r.steps.len(), 2);
        assert_eq!(
            (r.steps[1].weight, r.steps[1].pause.get().as_secs()),
            (50, 120)
        );
        let a = r.guard().expect("a canary is always analysed");
        assert_eq!(a.interval.get().as_secs(), 10);
        assert_eq!(
            (a.min_requests, a.max_error_rate, a.max_response_time_ratio),
            (100, 0.01, 1.5)
        );
        let plain = parse_str(Path::new("s.yaml"), GOOD).expect("valid");
        assert_eq!(
            crate::model::replica::template_hash(spec),
            crate::model::replica::template_hash(&plain[0].service.spec),
            "the rollout is not part of the template"
        );
        assert_eq!(
            plain[0].service.spec.rollout.guard(),
            None,
            "opt-in for rolling"
        );
    }

    #[test]
    fn canary_steps_and_thresholds_are_checked_where_they_are_written() {
        let text = format!(
            "{GOOD}  rollout:\n    strategy: canary\n    steps:\n      \
             - {{weight: 50, pause: 1s}}\n      - {{weight: 20, pause: 0s}}\n      \
             - {{weight: 100, pause: 1s}}\n    \
             analysis: {{minRequests: 0, maxErrorRate: 2, maxResponseTimeRatio: 0.5}}\n"
        );
        assert_eq!(
            errors(&text),
            [
                "s.yaml:21:18: weight (20) must be above the previous step's (50): steps increase",
                "s.yaml:21:29: pause must be above 0s",
                "s.yaml:22:18: weight (100) must be between 1 and 99 (percent)",
                "s.yaml:23:29: minRequests must be at least 1",
                "s.yaml:23:46: maxErrorRate (2) must be between 0 and 1 (a fraction)",
                "s.yaml:23:71: maxResponseTimeRatio (0.5) must be at least 1",
            ]
        );
        let no_lb = text
            .replace("  loadBalancer:\n    backend: web\n    bind: 127.0.0.1:8080\n", "")
            .replace("  autoscale:\n    minReplicas: 1\n    maxReplicas: 4\n    target: {inflightPerReplica: 8}\n", "");
        assert!(
            errors(&no_lb).iter().any(|e| e.ends_with(
                "strategy canary needs a loadBalancer: traffic is split by HAProxy weights"
            )),
            "{:?}",
            errors(&no_lb)
        );
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        // The flow sequence opened on line 9 is still open when line 10's `:` comes.
        let text = GOOD.replace("    port: 8080", "    port: [8080");
        assert_eq!(
            one_error(&text),
            "s.yaml:10:15: illegal placement of ':' indicator"
        );
    }

    #[test]
    fn a_health_check_reads_with_its_defaults_and_its_errors_are_located() {
        let text = GOOD.replace(
            "  loadBalancer:\n",
            "  loadBalancer:\n    healthCheck: {path: /healthz}\n",
        );
        let services = parse_str(Path::new("s.yaml"), &text).expect("valid");
        let lb = services[0].service.spec.load_balancer.as_ref().expect("lb");
        let h = lb.health_check.as_ref().expect("health check");
        assert_eq!(h.path.as_str(), "/healthz");
        assert_eq!(h.expect_status.to_string(), "200-399");
        assert_eq!((h.rise, h.fall), (2, 3));
        let bad = GOOD.replace(
            "  loadBalancer:\n",
            "  loadBalancer:\n    healthCheck: {path: healthz}\n",
        );
        assert!(
            one_error(&bad).contains("is not a request path"),
            "{}",
            one_error(&bad)
        );
        let bad = GOOD.replace(
            "  loadBalancer:\n",
            "  loadBalancer:\n    healthCheck: {path: /h, expectStatus: 399-200}\n",
        );
        assert!(
            one_error(&bad).contains("is not an HTTP status or range"),
            "{}",
            one_error(&bad)
        );
    }

    /// GOOD with `lines` added to its template, after `port` (line 9): they start on
    /// line 10.
    fn with_options(lines: &str) -> String {
        GOOD.replace("    port: 8080\n", &format!("    port: 8080\n{lines}"))
    }

    #[test]
    fn the_template_options_parse() {
        let text = with_options(
            "    mounts:
      - {type: bind, source: /srv/static, target: /www, readOnly: true}
      - {type: volume, source: cache, target: /cache}
      - {type: tmpfs, target: /tmp, size: 64Mi}
    user: \"1000:1000\"
    workingDir: /app
    readOnlyRootFilesystem: false
    capAdd: [NET_ADMIN]
    capDrop: [ALL]
    noNewPrivileges: true
    ulimits: {nofile: {soft: 65536, hard: 65536}}
    logging: {driver: json-file, options: {max-size: 10m}}
    extraHosts: {db.internal: 192.0.2.10}
    stopSignal: SIGTERM
",
        );
        let services = parse_str(Path::new("s.yaml"), &text).expect("valid");
        let t = &services[0].service.spec.template;
        assert_eq!(t.mounts.len(), 3);
        assert_eq!(t.mounts[2].size.map(|q| q.bytes()), Some(64 << 20));
        assert_eq!(t.user.as_ref().map(|u| u.as_str()), Some("1000:1000"));
        assert_eq!(t.cap_add[0].as_str(), "CAP_NET_ADMIN");
        assert!(t.no_new_privileges);
        assert_eq!(t.stop_signal.as_ref().map(|s| s.as_str()), Some("SIGTERM"));
    }

    #[test]
    fn mount_rules_are_located_at_the_field_that_breaks_them() {
        let cases = [
            (
                "{type: bind, source: srv, target: /www}",
                "s.yaml:11:30: bind source `srv` must be an absolute path",
            ),
            (
                "{type: volume, source: /cache, target: /c}",
                "s.yaml:11:32: `/cache` is not a volume name",
            ),
            (
                "{type: tmpfs, source: x, target: /tmp}",
                "s.yaml:11:31: a tmpfs has no source",
            ),
            (
                "{type: bind, source: /srv, target: /www, size: 1Mi}",
                "s.yaml:11:56: size is for tmpfs mounts only, not bind",
            ),
            (
                "{type: tmpfs, target: /tmp, readOnly: true}",
                "s.yaml:11:47: a tmpfs cannot be read-only",
            ),
            (
                "{type: bind, target: /www}",
                "s.yaml:11:16: a bind mount needs a source",
            ),
            (
                "{type: volume, target: /www}",
                "s.yaml:11:16: a volume mount needs a source",
            ),
            ("{type: tmpfs, target: www}", "s.yaml:11:"),
        ];
        for (mount, expected) in cases {
            let error = one_error(&with_options(&format!("    mounts:\n      - {mount}\n")));
            assert!(error.starts_with(expected), "{mount}: {error}");
        }
    }

    #[test]
    fn a_second_mount_on_one_target_points_at_the_second() {
        let text = with_options(
            "    mounts:\n      - {type: tmpfs, target: /data}\n      - {type: volume, source: data, target: /data/}\n",
        );
        assert_eq!(
            one_error(&text),
            "s.yaml:12:46: duplicate mount target `/data`: already mounted by mounts[0]"
        );
    }

    #[test]
    fn option_values_are_checked_where_they_are_written() {
        let cases = [
            (
                "    capAdd: [NET_FLY]\n",
                "s.yaml:10:14: `NET_FLY` is not a Linux capability",
            ),
            (
                "    user: \"a:b:c\"\n",
                "s.yaml:10:11: `a:b:c` is not a user",
            ),
            (
                "    workingDir: app\n",
                "s.yaml:10:17: `app` is not an absolute path",
            ),
            ("    ulimits: {nofiles: {soft: 1, hard: 1}}\n", "s.yaml:10:"),
            (
                "    ulimits: {nofile: {soft: 2, hard: 1}}\n",
                "s.yaml:10:30: ulimit nofile: soft (2) is above hard (1)",
            ),
            ("    extraHosts: {db.internal: 192.0.2.300}\n", "s.yaml:10:"),
            ("    extraHosts: {db_internal: 192.0.2.3}\n", "s.yaml:10:"),
            (
                "    stopSignal: SIGFOO\n",
                "s.yaml:10:17: `SIGFOO` is not a signal",
            ),
            ("    stopSignal: 65\n", "s.yaml:10:17: `65` is not a signal"),
            ("    logging: {driver: \"\"}\n", "s.yaml:10:"),
        ];
        for (line, expected) in cases {
            let error = one_error(&with_options(line));
            assert!(error.starts_with(expected), "{line}: {error}");
        }
    }

    #[test]
    fn an_env_file_is_read_beside_the_spec_and_env_wins_over_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app.env"), "# app\nA=from-file\nB=2\n").expect("write");
        let spec = GOOD.replace(
            "    port: 8080\n",
            "    port: 8080\n    env: {A: from-spec}\n    envFile: app.env\n",
        );
        std::fs::write(dir.path().join("web.yaml"), &spec).expect("write");
        let loaded = load(&[dir.path().to_owned()]).expect("valid");
        let t = &loaded[0].service.spec.template;
        let env: Vec<(&str, &str)> = t
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "from-spec"), ("B", "2")]);
        assert_eq!(
            t.env_file, None,
            "merged into env: the runtime never reads it"
        );
        let before = crate::model::replica::template_hash(&loaded[0].service.spec);
        std::fs::write(dir.path().join("app.env"), "B=3\n").expect("write");
        let edited = load(&[dir.path().to_owned()]).expect("valid");
        let after = crate::model::replica::template_hash(&edited[0].service.spec);
        assert_ne!(before, after, "an edit of the env file rolls the replicas");
    }

    #[test]
    fn a_bad_or_missing_env_file_is_an_error_at_env_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = GOOD.replace("    port: 8080\n", "    port: 8080\n    envFile: app.env\n");
        std::fs::write(dir.path().join("web.yaml"), &spec).expect("write");
        let missing = load(&[dir.path().to_owned()])
            .expect_err("missing")
            .to_string();
        assert!(
            missing.contains("web.yaml:10:14: cannot read envFile"),
            "{missing}"
        );
        std::fs::write(dir.path().join("app.env"), "A=1\nNOT AN ASSIGNMENT\n").expect("write");
        let bad = load(&[dir.path().to_owned()]).expect_err("bad").to_string();
        assert!(bad.contains("web.yaml:10:14: envFile `"), "{bad}");
        assert!(bad.contains("app.env` line 2: "), "{bad}");
    }

    #[test]
    fn no_new_privileges_is_an_error_under_swarm_where_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = GOOD.replace(
            "    port: 8080\n",
            "    port: 8080\n    noNewPrivileges: true\n",
        );
        std::fs::write(dir.path().join("web.yaml"), &spec).expect("write");
        load(&[dir.path().to_owned()]).expect("fine on docker");
        let err = load_for(&[dir.path().to_owned()], Runtime::Swarm).expect_err("not on swarm");
        assert!(
            err.to_string()
                .contains("web.yaml:10:22: noNewPrivileges is not supported by Swarm"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_located() {
        let text = GOOD.replace("  replicas: 2", "  replicas: 2\n  replicaz: 3");
        assert_eq!(
            one_error(&text),
            "s.yaml:7:3: unknown field `replicaz`, expected one of \
             replicas, template, network, loadBalancer, autoscale, rollout, placement"
        );
    }

    #[test]
    fn wrong_types_are_located() {
        let text = GOOD.replace("image: dockscale-webapp:latest", "image: [a, b]");
        assert!(
            one_error(&text).starts_with("s.yaml:8:12: "),
            "{}",
            one_error(&text)
        );
    }

    #[test]
    fn host_and_none_networks_are_rejected_with_the_reason() {
        for (network, why) in [("host", "share the host's address"), ("none", "no address")] {
            let text = GOOD.replace(
                "  loadBalancer:",
                &format!("  network: {network}\n  loadBalancer:"),
            );
            let error = one_error(&text);
            assert!(error.starts_with("s.yaml:10:12: "), "{error}");
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn negative_replicas_are_rejected_with_the_range() {
        let text = GOOD.replace("replicas: 2", "replicas: -1");
        assert_eq!(
            one_error(&text),
            "s.yaml:6:13: -1 is out of range: expected a whole number from 0 to 1000"
        );
    }

    #[test]
    fn target_and_targets_together_point_at_targets() {
        let text = GOOD.replace(
            "    target: {inflightPerReplica: 8}\n",
            "    target: {inflightPerReplica: 8}\n    targets: [{responseTimeMillis: 200}]\n",
        );
        let error = one_error(&text);
        assert!(error.starts_with("s.yaml:17:"), "{error}");
        assert!(
            error.ends_with("give `target` or `targets`, not both"),
            "{error}"
        );
    }

    #[test]
    fn several_targets_a_tolerance_per_direction_and_a_fallback_parse() {
        let text = GOOD.replace(
            "    target: {inflightPerReplica: 8}\n",
            "    targets: [{inflightPerReplica: 8}, {responseTimeMillis: 200}, \
             {requestsPerSecondPerReplica: 50}]\n    tolerance: {scaleUp: 0.05, scaleDown: 0.2}\n    \
             fallback: {after: 1m, replicas: 4}\n",
        );
        let a = autoscale_of(&text);
        assert_eq!(
            a.signals(),
            [
                Target::InflightPerReplica(8.0),
                Target::ResponseTimeMillis(200),
                Target::RequestsPerSecondPerReplica(50.0)
            ]
        );
        assert_eq!(
            (a.tolerance.scale_up(), a.tolerance.scale_down()),
            (0.05, 0.2)
        );
        let fallback = a.fallback.expect("fallback");
        assert_eq!(
            (fallback.after.get().as_secs(), fallback.replicas),
            (60, Some(4))
        );
    }

    #[test]
    fn a_single_tolerance_still_means_both_directions() {
        let text = GOOD.replace(
            "    target: {inflightPerReplica: 8}\n",
            "    target: {inflightPerReplica: 8}\n    tolerance: 0.2\n",
        );
        let a = autoscale_of(&text);
        assert_eq!(
            (a.tolerance.scale_up(), a.tolerance.scale_down()),
            (0.2, 0.2)
        );
        assert_eq!(a.signals(), [Target::InflightPerReplica(8.0)]);
    }

    #[test]
    fn bad_tolerances_and_fallbacks_are_located() {
        let with = |extra: &str| {
            GOOD.replace(
                "    target: {inflightPerReplica: 8}\n",
                &format!("    target: {{inflightPerReplica: 8}}\n{extra}"),
            )
        };
        let error = one_error(&with("    tolerance: {scaleUp: 0.05, scaleDown: 1.5}\n"));
        assert!(error.starts_with("s.yaml:17:"), "{error}");
        assert!(
            error.ends_with("tolerance 1.5 must be from 0 to 1"),
            "{error}"
        );
        let error = one_error(&with("    fallback: {after: 1m, replicas: 9}\n"));
        assert!(error.starts_with("s.yaml:17:"), "{error}");
        assert!(
            error.ends_with(
                "fallback.replicas (9) must be within minReplicas (1) and maxReplicas (4)"
            ),
            "{error}"
        );
        let error = one_error(&GOOD.replace("    target: {inflightPerReplica: 8}\n", ""));
        assert!(
            error.ends_with("autoscale needs `target` or a non-empty `targets` list"),
            "{error}"
        );
    }

    /// GOOD with `autoscale.schedules` written as `list` (line 17 on).
    fn with_schedules(list: &str) -> String {
        GOOD.replace(
            "    target: {inflightPerReplica: 8}\n",
            &format!("    target: {{inflightPerReplica: 8}}\n    schedules:\n{list}"),
        )
    }

    #[test]
    fn schedules_parse_with_their_defaults() {
        let text = with_schedules(
            "      - {cron: \"0 8 * * 1-5\", timezone: Europe/Zurich, duration: 10h, minReplicas: 4}\n      \
             - {cron: \"@daily\", duration: 30m, minReplicas: 2}\n",
        );
        let loaded = parse_str(Path::new("s.yaml"), &text).expect("valid");
        let a = loaded[0].service.spec.autoscale.clone().expect("autoscale");
        let s = &a.schedules;
        assert_eq!(s.len(), 2);
        assert_eq!(
            (
                s[0].cron.as_str(),
                s[0].timezone.to_string(),
                s[0].min_replicas
            ),
            ("0 8 * * 1-5", "Europe/Zurich".to_owned(), 4)
        );
        assert_eq!(s[0].duration.get().as_secs(), 36_000);
        assert_eq!(s[1].timezone.to_string(), "UTC", "the default time zone");
    }

    #[test]
    fn bad_schedules_are_located_at_the_field_and_say_what_is_wrong() {
        let entry = |fields: &str| with_schedules(&format!("      - {{{fields}}}\n"));
        let good = "cron: \"0 8 * * 1-5\", timezone: Europe/Zurich, duration: 10h, minReplicas: 4";
        assert!(parse_str(Path::new("s.yaml"), &entry(good)).is_ok());

        let error = one_error(&entry(&good.replace("0 8 * * 1-5", "0 8 * 1-5")));
        assert!(error.starts_with("s.yaml:18:"), "{error}");
        assert!(
            error.contains("invalid cron expression `0 8 * 1-5`: it has 4 fields"),
            "{error}"
        );
        let error = one_error(&entry(&good.replace("0 8 * * 1-5", "0 24 * * 1-5")));
        assert!(error.starts_with("s.yaml:18:"), "{error}");
        assert!(error.contains("the hour field `24` is wrong"), "{error}");
        let error = one_error(&entry(&good.replace("Europe/Zurich", "Europe/Zurch")));
        assert!(error.starts_with("s.yaml:18:"), "{error}");
        assert!(
            error.contains("unknown time zone `Europe/Zurch`"),
            "{error}"
        );
        let error = one_error(&entry(&good.replace("10h", "0s")));
        assert_eq!(
            error,
            "s.yaml:18:66: duration must be above 0s: the window opened by \"0 8 * * 1-5\" \
             would close at once"
        );
        let error = one_error(&entry(&good.replace("10h", "367d")));
        assert!(
            error.starts_with("s.yaml:18:66: duration 1year 1day 18h is longer"),
            "{error}"
        );
        let error = one_error(&entry(&good.replace("minReplicas: 4", "minReplicas: 9")));
        assert_eq!(
            error,
            "s.yaml:18:84: the schedule's minReplicas (9) is greater than maxReplicas (4)"
        );
        let error = one_error(&entry(&good.replace("minReplicas: 4", "minReplicas: 0")));
        assert!(error.starts_with("s.yaml:18:"), "{error}");
        assert!(error.contains("0 is out of range"), "{error}");
        let error = one_error(&entry(&good.replace("duration: 10h", "duration: 10")));
        assert!(error.contains("add a unit"), "{error}");
        let error = one_error(&entry(&good.replace("duration: 10h, ", "")));
        assert!(error.contains("duration"), "{error}");
        let error = one_error(&entry(&format!("{good}, floor: 3")));
        assert!(error.starts_with("s.yaml:18:"), "{error}");
        assert!(error.contains("floor"), "{error}");
    }

    #[test]
    fn replicas_above_max_replicas_point_at_replicas() {
        let text = GOOD.replace("replicas: 2", "replicas: 5");
        assert_eq!(
            one_error(&text),
            "s.yaml:6:13: replicas (5) is greater than autoscale.maxReplicas (4)"
        );
    }

    #[test]
    fn scale_to_zero_takes_its_defaults_from_an_empty_section() {
        let text = GOOD.replace("minReplicas: 1", "minReplicas: 0\n    scaleToZero: {}");
        let a = autoscale_of(&text);
        let z = a.scales_to_zero().expect("scales to zero");
        assert_eq!(z.idle_after.get(), std::time::Duration::from_secs(300));
        assert_eq!(
            z.activation_timeout.get(),
            std::time::Duration::from_secs(30)
        );
        let text = GOOD.replace(
            "minReplicas: 1",
            "minReplicas: 0\n    scaleToZero: {idleAfter: 3s, activationTimeout: 2s}",
        );
        let a = autoscale_of(&text);
        let z = a.scales_to_zero().expect("scales to zero");
        assert_eq!(z.idle_after.get(), std::time::Duration::from_secs(3));
    }

    #[test]
    fn min_replicas_zero_needs_scale_to_zero_and_the_other_way_round() {
        let text = GOOD.replace("minReplicas: 1", "minReplicas: 0");
        assert_eq!(
            one_error(&text),
            "s.yaml:14:18: minReplicas: 0 needs `scaleToZero` (`scaleToZero: {}` for the \
             defaults): without it nothing would hold the requests that arrive while no \
             replica runs"
        );
        let text = GOOD.replace("minReplicas: 1", "minReplicas: 1\n    scaleToZero: {}");
        assert_eq!(
            one_error(&text),
            "s.yaml:15:18: scaleToZero needs minReplicas: 0 (it is 1)"
        );
    }

    #[test]
    fn scale_to_zero_durations_are_checked_where_they_are_written() {
        let text = GOOD.replace(
            "minReplicas: 1",
            "minReplicas: 0\n    scaleToZero:\n      idleAfter: 0s\n      activationTimeout: 2m",
        );
        assert_eq!(
            errors(&text),
            [
                "s.yaml:16:18: idleAfter must be above 0s",
                "s.yaml:17:26: activationTimeout 2m must be from 100ms to 60s (HAProxy's \
                 client timeout bounds how long a request can be held)"
            ]
        );
        let text = GOOD.replace(
            "minReplicas: 1",
            "minReplicas: 0\n    scaleToZero: {idleAfter: soon}",
        );
        let e = one_error(&text);
        assert!(e.starts_with("s.yaml:15:30: "), "{e}");
    }

    #[test]
    fn scale_to_zero_needs_a_load_balancer() {
        let text = GOOD
            .replace("minReplicas: 1", "minReplicas: 0\n    scaleToZero: {}")
            .replace(
                "  loadBalancer:\n    backend: web\n    bind: 127.0.0.1:8080\n",
                "",
            );
        assert!(
            errors(&text).iter().any(|e| e.ends_with(
                "autoscale needs a loadBalancer: demand is read from the \
                                      HAProxy backend"
            )),
            "{:?}",
            errors(&text)
        );
    }

    #[test]
    fn a_warm_pool_is_read_with_its_size() {
        let text = GOOD.replace("minReplicas: 1", "minReplicas: 1\n    warmPool: {size: 2}");
        let a = autoscale_of(&text);
        assert_eq!(a.warm_pool, Some(crate::spec::WarmPool { size: 2 }));
        assert_eq!(autoscale_of(GOOD).warm_pool, None);
    }

    #[test]
    fn a_warm_pool_above_max_replicas_or_the_bound_points_at_its_size() {
        let text = GOOD.replace("minReplicas: 1", "minReplicas: 1\n    warmPool: {size: 5}");
        assert_eq!(
            one_error(&text),
            "s.yaml:15:22: warmPool.size (5) is greater than maxReplicas (4): a scale-up \
             never takes more than maxReplicas"
        );
        let text = GOOD
            .replace("maxReplicas: 4", "maxReplicas: 100")
            .replace("minReplicas: 1", "minReplicas: 1\n    warmPool: {size: 60}");
        assert_eq!(
            one_error(&text),
            "s.yaml:15:22: warmPool.size (60) is above 50: each warm container keeps its \
             memory while it waits"
        );
        let text = GOOD.replace(
            "minReplicas: 1",
            "minReplicas: 1\n    warmPool: {size: 1, count: 2}",
        );
        assert!(
            one_error(&text).contains("count"),
            "unknown fields are refused"
        );
    }

    #[test]
    fn a_warm_pool_is_refused_on_swarm_where_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = GOOD.replace("minReplicas: 1", "minReplicas: 1\n    warmPool: {size: 1}");
        std::fs::write(dir.path().join("web.yaml"), &spec).expect("write");
        load(&[dir.path().to_owned()]).expect("fine on docker");
        let err = load_for(&[dir.path().to_owned()], Runtime::Swarm).expect_err("not on swarm");
        assert!(
            err.to_string().contains(
                "web.yaml:15:15: warmPool is for the docker runtime: Swarm cannot pause a task"
            ),
            "{err}"
        );
    }

    #[test]
    fn scale_to_zero_is_refused_on_swarm_where_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = GOOD.replace("minReplicas: 1", "minReplicas: 0\n    scaleToZero: {}");
        std::fs::write(dir.path().join("web.yaml"), &spec).expect("write");
        load(&[dir.path().to_owned()]).expect("fine on docker");
        let err = load_for(&[dir.path().to_owned()], Runtime::Swarm).expect_err("not on swarm");
        assert!(
            err.to_string().contains(
                "web.yaml:14:18: minReplicas: 0 (scale to zero) is for the docker runtime"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_canary_or_an_analysis_is_refused_on_swarm_where_it_is_written() {
        for (rollout, expected) in [
            (
                "  rollout:\n    strategy: canary\n    steps: [{weight: 25, pause: 10s}]\n",
                "web.yaml:18:15: strategy: canary is for the docker runtime",
            ),
            (
                "  rollout:\n    analysis: {interval: 5s}\n",
                "web.yaml:18:15: rollout.analysis is for the docker runtime",
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("web.yaml"), format!("{GOOD}{rollout}")).expect("write");
            load(&[dir.path().to_owned()]).expect("fine on docker");
            let err = load_for(&[dir.path().to_owned()], Runtime::Swarm).expect_err("not on swarm");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn min_above_max_points_at_min_replicas() {
        let text = GOOD
            .replace("minReplicas: 1", "minReplicas: 6")
            .replace("replicas: 2", "replicas: 4");
        assert_eq!(
            one_error(&text),
            "s.yaml:14:18: minReplicas (6) is greater than maxReplicas (4)"
        );
    }

    #[test]
    fn bad_durations_and_quantities_are_located() {
        let text = GOOD.replace("    port: 8080", "    port: 8080\n    stopGracePeriod: 10");
        assert_eq!(
            one_error(&text),
            "s.yaml:10:22: invalid duration `10`: add a unit, e.g. `10s` or `10ms`"
        );
        let text = GOOD.replace(
            "    port: 8080",
            "    port: 8080\n    resources: {memory: 12Qi}",
        );
        assert_eq!(
            one_error(&text),
            "s.yaml:10:25: invalid quantity `12Qi` (examples: 64Mi, 1Gi, 500M)"
        );
    }

    #[test]
    fn a_name_that_is_not_a_dns_label_is_located() {
        let text = GOOD.replace("name: web", "name: Web_1");
        assert!(one_error(&text).starts_with("s.yaml:4:9: `Web_1` is not a DNS label"));
    }

    #[test]
    fn every_document_is_checked_and_located_in_the_file() {
        let second = GOOD
            .replace("name: web", "name: api")
            .replace("backend: web", "backend: api")
            .replace("127.0.0.1:8080", "127.0.0.1:8081")
            .replace("replicas: 2", "replicas: 9");
        let third = GOOD.replace("maxReplicas: 4", "maxReplicas: nine");
        let text = format!("{GOOD}---\n{second}---\n{third}");
        assert_eq!(
            errors(&text),
            vec![
                "s.yaml:23:13: replicas (9) is greater than autoscale.maxReplicas (4)".to_owned(),
                "s.yaml:49:18: expected a whole number from 1 to 1000".to_owned(),
            ]
        );
    }

    #[test]
    fn duplicate_names_backends_and_binds_are_reported_where_they_repeat() {
        let text = format!("{GOOD}---\n{GOOD}");
        assert_eq!(
            errors(&text),
            vec![
                "s.yaml:21:9: duplicate metadata.name `web`: already used at s.yaml:4".to_owned(),
                "s.yaml:28:14: duplicate loadBalancer.backend `web`: already used at s.yaml:11"
                    .to_owned(),
                "s.yaml:29:11: duplicate loadBalancer.bind `127.0.0.1:8080`: \
                 already used at s.yaml:12"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn empty_documents_and_comments_are_fine() {
        let text = format!("# leading comment\n---\n{GOOD}---\n...\n");
        let services = parse_str(Path::new("s.yaml"), &text).expect("valid");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].line, 3);
    }

    #[test]
    fn no_input_makes_it_panic() {
        let inputs = [
            "",
            "---",
            "- a\n- b",
            "a: [",
            "{",
            "apiVersion: 3",
            "\0\u{1}",
            "spec: ~",
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec: {replicas: 99999999999999999999, template: {image: x}}",
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec: {template: {image: x, resources: {memory: 1e400, cpus: -1}}}",
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec: {template: {image: x, stopGracePeriod: 99999999999999999999999h}}",
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec: {template: {image: x, mounts: [{type: tmpfs, target: /, size: 1e400}, \
             {type: bind, source: '', target: '/'}, {type: volume, target: /}], \
             ulimits: {nofile: {soft: 99999999999999999999, hard: -1}}, stopSignal: 99999, \
             user: ':', extraHosts: {'': ''}, capAdd: [''], logging: {driver: ''}}}}",
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec: {template: {image: x, mounts: [[]], ulimits: [], envFile: ''}}",
            "&a [*a]",
            "a: &x\n  b: *x\n",
            "? [a]\n: b",
        ];
        for input in inputs {
            let _ = parse_str(Path::new("fuzz.yaml"), input);
        }
    }

    #[test]
    fn a_directory_skips_foreign_yaml_but_a_named_file_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global: {scrape_interval: 5s}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("web.yaml"), GOOD).expect("write");
        std::fs::write(dir.path().join(".web.yaml.swp"), "garbage").expect("write");
        let loaded = load(&[dir.path().to_owned()]).expect("valid");
        assert_eq!(loaded.len(), 1);
        let named = load(&[dir.path().join("prometheus.yml")]).expect_err("not a spec");
        assert!(
            named.0[0].to_string().contains("prometheus.yml:1:1: "),
            "{named}"
        );
    }

    #[test]
    fn never_pulling_is_an_error_at_the_field_on_swarm_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.yaml");
        let text = GOOD.replace(
            "    image: dockscale-webapp:latest\n",
            "    image: dockscale-webapp:latest\n    imagePullPolicy: Never\n",
        );
        assert_ne!(text, GOOD);
        std::fs::write(&path, &text).expect("write");
        assert!(load_for(std::slice::from_ref(&path), Runtime::Docker).is_ok());
        let err = load_for(&[path], Runtime::Swarm).expect_err("Never on Swarm");
        let line = text
            .lines()
            .position(|l| l.contains("imagePullPolicy"))
            .expect("the field")
            + 1;
        let shown = err.to_string();
        assert!(shown.contains(&format!("web.yaml:{line}:")), "{shown}");
        assert!(
            shown.contains("imagePullPolicy: Never is for the docker runtime"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_path_is_an_error_not_an_empty_spec() {
        let err = load(&[PathBuf::from("/nonexistent/dockscale.yaml")]).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/dockscale.yaml: cannot read:"),
            "{err}"
        );
    }

    #[test]
    fn the_example_manifests_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let loaded = load(&[dir]).expect("manifests validate");
        assert!(loaded.iter().any(|l| l.service.name() == "webapp"));
    }

    #[test]
    fn the_readmes_spec_reference_validates() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("## The spec\n")
            .nth(1)
            .expect("a spec section");
        let block = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a yaml block");
        let loaded = parse_str(Path::new("README.md"), block).expect("the README's spec validates");
        assert!(loaded[0].service.spec.template.healthcheck.is_some());
    }

    #[test]
    fn a_container_healthcheck_reads_with_its_defaults_and_its_errors_are_located() {
        let spec = |hc: &str| {
            format!(
                "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {{name: a}}\n\
                 spec:\n  template:\n    image: x\n    healthcheck: {hc}\n"
            )
        };
        let loaded = parse_str(Path::new("s.yaml"), &spec("{command: [/check]}")).expect("valid");
        let hc = loaded[0]
            .service
            .spec
            .template
            .healthcheck
            .clone()
            .expect("healthcheck");
        assert_eq!(hc.interval.get(), std::time::Duration::from_secs(10));
        assert_eq!(hc.timeout.get(), std::time::Duration::from_secs(5));
        assert_eq!(hc.retries, 3);
        assert!(hc.start_period.is_zero() && !hc.disable);
        assert_eq!(
            one_error(&spec("{interval: 5s}")),
            "s.yaml:7:18: healthcheck needs a command (or `disable: true` to turn off the image's)"
        );
        assert!(
            one_error(&spec("{disable: true, command: [/c]}")).contains("a disabled healthcheck")
        );
        assert!(one_error(&spec("{command: [/c], interval: 0s}"))
            .contains("interval must be at least 1ms"));
        assert!(one_error(&spec("{command: [/c], retries: 0}")).starts_with("s.yaml:7:"));
        assert!(parse_str(Path::new("s.yaml"), &spec("{disable: true}")).is_ok());
    }

    #[test]
    fn unhealthy_replace_after_is_located_under_swarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "apiVersion: dockscale/v1alpha1\nkind: ScaledService\nmetadata: {name: a}\n\
             spec:\n  template:\n    image: x\n    unhealthyReplaceAfter: 10s\n",
        )
        .expect("write");
        assert!(load_for(std::slice::from_ref(&file), Runtime::Docker).is_ok());
        let errors = load_for(&[file], Runtime::Swarm).expect_err("swarm rejects it");
        let text = errors.to_string();
        assert!(
            text.contains("s.yaml:7:") && text.contains("Swarm replaces"),
            "{text}"
        );
    }

    /// Every error names the file and, when it has a position, one inside the text.
    fn check_located(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Err(errors) = parse_str(Path::new("fuzz.yaml"), text) {
            proptest::prop_assert!(!errors.0.is_empty());
            let lines = text.split('\n').count() as u64;
            for e in &errors.0 {
                proptest::prop_assert_eq!(e.file.as_path(), Path::new("fuzz.yaml"));
                proptest::prop_assert!(!e.message.is_empty(), "empty message: {e}");
                if let Some((line, col)) = e.position {
                    proptest::prop_assert!(
                        (1..=lines + 1).contains(&line) && col >= 1,
                        "{e} is outside the {lines}-line text"
                    );
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        #[test]
        fn any_text_is_accepted_or_rejected_with_located_errors(text in "\\PC{0,200}") {
            check_located(&text)?;
        }

        /// A schedule entry with any of cron's characters and a zone-like name: a
        /// valid spec or located errors, never a panic.
        #[test]
        fn a_hostile_schedule_is_accepted_or_rejected_with_located_errors(
            cron in "[0-9*/,#LW?+@A-Z -]{0,24}",
            zone in "[A-Za-z_/+-]{0,20}",
            duration in "[0-9]{1,4}(ms|s|m|h|d)?",
            floor in 0u32..2000,
        ) {
            let text = with_schedules(&format!(
                "      - {{cron: \"{cron}\", timezone: \"{zone}\", duration: {duration}, \
                 minReplicas: {floor}}}\n"
            ));
            check_located(&text)?;
        }

        /// A valid spec with a few characters deleted, replaced or inserted: close to
        /// what a user mistypes, and what reaches the deeper checks.
        #[test]
        fn a_mistyped_spec_is_accepted_or_rejected_with_located_errors(
            edits in proptest::collection::vec(
                (0usize..GOOD.len(), 0u8..3, proptest::sample::select(
                    " :-[]{}&*!|>'\"#%@,?\n\t09-.xNn~".chars().collect::<Vec<_>>(),
                )),
                1..8,
            )
        ) {
            let mut text: Vec<char> = GOOD.chars().collect();
            for (at, op, c) in edits {
                let at = at % (text.len() + 1);
                match op {
                    0 if at < text.len() => { text.remove(at); }
                    1 if at < text.len() => text[at] = c,
                    _ => text.insert(at, c),
                }
            }
            check_located(&text.into_iter().collect::<String>())?;
        }
    }
}
