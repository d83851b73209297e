//! The frontends' certificates: found on disk, checked, and installed into the managed
//! HAProxy's state directory.
//!
//! A spec names PEM files or directories. Each certificate becomes one PEM in
//! `<state>/tls/<frontend>/` (its chain and its key together, which is what HAProxy
//! loads), listed in `<state>/tls/<frontend>.crtlist` (the default first; SNI picks
//! among the rest by their names). A certificate whose file changes is checked (it
//! parses, its key matches it) and swapped into the running HAProxy through the runtime
//! API (`set ssl cert` / `commit ssl cert`), never by a reload; one that does not pass
//! is reported and the one in place keeps serving. [`check`] is pure; the rest reads
//! and writes files.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// One certificate as the spec gives it: its file, and the key's when apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub cert: PathBuf,
    /// A separate key file (`<stem>.key` beside it), when the key is not in `cert`.
    pub key: Option<PathBuf>,
}

impl Source {
    /// What to show of it: the certificate file.
    pub fn label(&self) -> String {
        self.cert.display().to_string()
    }
}

/// What a certificate says, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The names SNI matches it on: its DNS subject alternative names, else its CN.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate read and checked: the PEM HAProxy loads, its digest, what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub pem: String,
    pub digest: String,
    pub info: CertInfo,
}

/// The certificate files named by `paths`: files as they are, directories' `*.pem` and
/// `*.crt` files (sorted). A file without a private key takes the one of the same stem
/// ending in `.key`.
pub fn sources(paths: &[PathBuf]) -> Result<Vec<Source>, String> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .filter_map(|entry| Some(entry.ok()?.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.')
                        && (name.ends_with(".pem") || name.ends_with(".crt"))
                        && p.is_file()
                })
                .collect();
            files.sort();
            out.extend(files.into_iter().map(source_of));
        } else {
            out.push(source_of(path.clone()));
        }
    }
    Ok(out)
}

fn source_of(cert: PathBuf) -> Source {
    let key = cert.with_extension("key");
    Source {
        key: key.is_file().then_some(key),
        cert,
    }
}

/// Reads a certificate (and its key file) and checks it.
pub fn read(source: &Source) -> Result<Material, String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut pem = read(&source.cert)?;
    if let Some(key) = &source.key {
        if !pem.contains("PRIVATE KEY-----") {
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(&read(key)?);
        }
    }
    let info = check(&pem)?;
    // HAProxy's payload ends at an empty line: the PEM must have none.
    let pem: String = pem
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let digest = Sha256::digest(pem.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Material { pem, digest, info })
}

/// Checks a PEM holding a certificate chain and a private key: both parse, and the key
/// is the certificate's. Pure.
pub fn check(pem: &str) -> Result<CertInfo, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a certificate does not parse: {e}"))?;
    let Some(leaf) = certs.first() else {
        return Err("no certificate in the file".to_owned());
    };
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no private key (in the file, or in a .key file of the same name)".to_owned()
        }
        e => format!("the private key does not parse: {e}"),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    rustls::sign::CertifiedKey::new(certs.clone(), signing)
        .keys_match()
        .map_err(|e| format!("the private key does not match the certificate ({e})"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    Ok(CertInfo {
        names,
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// Where a frontend's certificates live in the state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub crt_list: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path, frontend: &str) -> Self {
        let tls = state_dir.join("tls");
        Layout {
            dir: tls.join(frontend),
            crt_list: tls.join(format!("{frontend}.crtlist")),
        }
    }

    /// The installed file of the `i`-th certificate (its name is what the runtime API
    /// calls it).
    pub fn file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i}.pem"))
    }
}

/// A certificate installed for HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub source: Source,
    pub file: PathBuf,
    pub digest: String,
    pub info: CertInfo,
}

/// What installing a frontend's certificates found.
#[derive(Debug, Default)]
pub struct Installation {
    pub installed: Vec<Installed>,
    /// Certificates left out, with why.
    pub rejected: Vec<(Source, String)>,
}

/// Writes the frontend's certificates that pass [`check`] and its crt-list. A
/// certificate that does not pass is left out (reported), unless an earlier good copy
/// of it is installed: that one stays (the old certificate keeps serving).
pub fn install(
    layout: &Layout,
    sources: &[Source],
    previous: &[Installed],
) -> Result<Installation, String> {
    let io = |what: &Path, e: std::io::Error| format!("cannot write {}: {e}", what.display());
    std::fs::create_dir_all(&layout.dir).map_err(|e| io(&layout.dir, e))?;
    let mut result = Installation::default();
    for source in sources {
        let file = layout.file(result.installed.len());
        match read(source) {
            Ok(material) => {
                write_private(&file, &material.pem).map_err(|e| io(&file, e))?;
                result.installed.push(Installed {
                    source: source.clone(),
                    file,
                    digest: material.digest,
                    info: material.info,
                });
            }
            Err(why) => {
                if let Some(old) = previous.iter().find(|p| &p.source == source) {
                    if let Ok(pem) = std::fs::read_to_string(&old.file) {
                        write_private(&file, &pem).map_err(|e| io(&file, e))?;
                        result.installed.push(Installed {
                            file,
                            ..old.clone()
                        });
                    }
                }
                result.rejected.push((source.clone(), why));
            }
        }
    }
    let list: String = result
        .installed
        .iter()
        .map(|i| format!("{}\n", i.file.display()))
        .collect();
    write_private(&layout.crt_list, &list).map_err(|e| io(&layout.crt_list, e))?;
    Ok(result)
}

/// Writes a file only its owner reads (it holds private keys), atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Rewrites an installed certificate's file after a swap, so that a reload or a
/// restart serves the new one too.
pub fn rewrite(installed: &Installed, pem: &str) -> Result<(), String> {
    write_private(&installed.file, pem)
        .map_err(|e| format!("cannot write {}: {e}", installed.file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_certificate_with_its_key_passes_with_its_names_and_expiry() {
        let (cert, key) = self_signed(&["shop.example.com", "www.example.com"]);
        let info = check(&format!("{cert}{key}")).expect("valid");
        assert_eq!(info.names, ["shop.example.com", "www.example.com"]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!(info.not_after > now, "{info:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["b.example.com"]);
        let err = check(&format!("{cert}{other_key}")).expect_err("mismatch");
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn a_file_without_a_key_or_without_a_certificate_is_refused() {
        let (cert, key) = self_signed(&["a.example.com"]);
        assert!(check(&cert).expect_err("no key").contains("no private key"));
        assert!(check(&key).expect_err("no cert").contains("no certificate"));
        assert!(check("garbage").is_err());
        let truncated = &cert[..cert.len() / 2];
        assert!(check(&format!("{truncated}\n{key}")).is_err());
    }

    #[test]
    fn a_directory_pairs_certificates_with_key_files_and_installs_them_with_a_crt_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, a_key) = self_signed(&["a.example.com"]);
        let (b, b_key) = self_signed(&["b.example.com"]);
        std::fs::write(dir.path().join("a.pem"), format!("{a}{a_key}")).expect("write");
        std::fs::write(dir.path().join("b.crt"), &b).expect("write");
        std::fs::write(dir.path().join("b.key"), &b_key).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let found = sources(&[dir.path().to_owned()]).expect("sources");
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[1].key.as_deref(),
            Some(dir.path().join("b.key").as_path())
        );

        let state = tempfile::tempdir().expect("state");
        let layout = Layout::new(state.path(), "public");
        let done = install(&layout, &found, &[]).expect("installed");
        assert!(done.rejected.is_empty(), "{:?}", done.rejected);
        let list = std::fs::read_to_string(&layout.crt_list).expect("crt-list");
        assert_eq!(
            list,
            format!(
                "{}\n{}\n",
                layout.file(0).display(),
                layout.file(1).display()
            )
        );
        let second = std::fs::read_to_string(layout.file(1)).expect("pem");
        assert!(second.contains("CERTIFICATE") && second.contains("PRIVATE KEY"));

        // The second turns bad: the copy installed before stays, and it is reported.
        std::fs::write(dir.path().join("b.key"), self_signed(&["c.example.com"]).1).expect("write");
        let again = install(&layout, &found, &done.installed).expect("installed");
        assert_eq!(again.rejected.len(), 1);
        assert_eq!(again.installed.len(), 2);
        assert_eq!(again.installed[1].digest, done.installed[1].digest);
    }
}
