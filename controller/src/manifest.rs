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

use crate::spec::ScaledService;

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

/// Loads every spec under `paths` (files, or directories of `*.yaml`/`*.yml`) and
/// validates them together. Either all services or all errors: a partial result would
/// let the controller delete what an unparsable document describes.
pub fn load(paths: &[PathBuf]) -> Result<Vec<LoadedService>, SpecErrors> {
    let mut services = Vec::new();
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
                        read_file(&file, Origin::Directory, &mut services, &mut errors);
                    }
                }
                Err(e) => errors.push(file_error(path, format!("cannot read directory: {e}"))),
            },
            Ok(_) => read_file(path, Origin::Explicit, &mut services, &mut errors),
            Err(e) => errors.push(file_error(path, format!("cannot read: {e}"))),
        }
    }
    let parsed_ok = errors.is_empty();
    check_unique(&services, &mut errors);
    if parsed_ok && errors.is_empty() {
        Ok(services.into_iter().map(|p| p.loaded).collect())
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

fn read_file(file: &Path, origin: Origin, services: &mut Vec<Parsed>, errors: &mut Vec<SpecError>) {
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
    let (found, mut errs) = parse_documents(file, &text);
    services.extend(found);
    errors.append(&mut errs);
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

/// Parses every document of one file. Pure: the file name only labels the errors.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<LoadedService>, SpecErrors> {
    let (found, mut errors) = parse_documents(file, text);
    check_unique(&found, &mut errors);
    if errors.is_empty() {
        Ok(found.into_iter().map(|p| p.loaded).collect())
    } else {
        Err(SpecErrors(errors))
    }
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

fn parse_documents(file: &Path, text: &str) -> (Vec<Parsed>, Vec<SpecError>) {
    let mut services = Vec::new();
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
        let line = doc.first_line + tree.referenced.line().max(1) - 1;
        services.push(Parsed {
            loaded: LoadedService {
                service,
                file: file.to_owned(),
                line,
            },
            tree,
            first_line: doc.first_line,
        });
    }
    (services, errors)
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

/// Any YAML value, with the location of every mapping value. Used only to point
/// errors at the right place.
#[derive(Debug, Clone)]
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq,
    Scalar,
    Null,
}

/// The line and column (relative to the document) of the value at `path`, or of its
/// nearest existing parent.
fn locate(tree: &Spanned<Node>, path: &[&str]) -> (u64, u64) {
    {
        let mut here = tree;
        for key in path {
            let Node::Map(entries) = &here.value else {
                break;
            };
            match entries.iter().find(|(k, _)| k == key) {
                Some((_, v)) => here = v,
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
                while seq.next_element::<Node>()?.is_some() {}
                Ok(Node::Seq)
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
