//! Where client commands find the cluster and their token, as kubectl reads
//! its kubeconfig: `--coordinator`/`COHORT_COORDINATOR` and
//! `--token`/`COHORT_TOKEN` first, then the client config file
//! (`$COHORT_CONFIG`, else `$XDG_CONFIG_HOME/cohort/config.toml`, else
//! `~/.config/cohort/config.toml`) that `cohort up` writes, readable only
//! by its owner. The coordinator is checked against the cluster CA:
//! `COHORT_CA` (a PEM file, or PEM text) first, then the config's `ca`.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

/// The coordinator clients use when nothing names one.
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:7070";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster CA's certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("COHORT_CONFIG") {
        return PathBuf::from(p);
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".config"),
    };
    base.join("cohort").join("config.toml")
}

/// The client config at `path`; none when the file does not exist.
pub fn load(path: &Path) -> Result<ClientConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}: not a Cohort client config", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `config` to `path`, readable and writable by its owner only.
pub fn save(path: &Path, config: &ClientConfig) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `cohort up`: where the cluster is, its CA, and an admin token. Keep it private.\n{}",
        toml::to_string(config)?
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: make sure it is private.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

static TOKEN: RwLock<Option<String>> = RwLock::new(None);
static CA: RwLock<Option<String>> = RwLock::new(None);

/// The CA this process checks the coordinator against: `COHORT_CA` (a
/// file, or the PEM text itself) over `configured`.
pub fn set_ca(configured: Option<String>) -> Result<()> {
    let ca = match std::env::var("COHORT_CA").ok().filter(|v| !v.trim().is_empty()) {
        Some(pem) if pem.trim_start().starts_with("-----BEGIN") => Some(pem),
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("COHORT_CA: cannot read {path}"))?;
            // Otherwise every connection fails later as `UnknownIssuer`, naming neither.
            if !text.contains(PEM_CERTIFICATE) {
                bail!(
                    "COHORT_CA: {path} holds no PEM certificate (a `{PEM_CERTIFICATE}` block), such as the cluster's ca.pem"
                );
            }
            Some(text)
        }
        None => configured,
    };
    *CA.write().expect("CA lock") = ca;
    Ok(())
}

const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// What a client is told when it has no CA to check the coordinator with.
const HOW_TO_GET_THE_CA: &str = "no cluster CA to check the coordinator with: `cohort up` writes it to the client \
     config; a standalone coordinator keeps it in its data directory as ca.pem (set COHORT_CA to that file)";

/// An endpoint for the coordinator at `address`: TLS, checked against the CA.
pub fn endpoint(address: &str) -> Result<tonic::transport::Endpoint> {
    let ca = CA.read().expect("CA lock").clone().context(HOW_TO_GET_THE_CA)?;
    Ok(tonic::transport::Endpoint::from_shared(crate::tls::https(address))
        .with_context(|| format!("`{address}` is not an address"))?
        .tls_config(crate::tls::coordinator_client(&ca))?)
}

/// The token every client call of this process carries.
pub fn set_token(token: Option<String>) {
    *TOKEN.write().expect("token lock") = token.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string());
}

pub fn token() -> Option<String> {
    TOKEN.read().expect("token lock").clone()
}

/// Adds `authorization: Bearer TOKEN` to each call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn current() -> Bearer {
        token().map_or(Bearer(None), |t| Bearer::with(&t))
    }

    pub fn with(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().ok())
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to the coordinator whose calls carry the token.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

pub fn with_token(channel: tonic::transport::Channel) -> Channel {
    InterceptedService::new(channel, Bearer::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort/config.toml");
        assert_eq!(load(&path).unwrap(), ClientConfig::default(), "no file: no config");
        let config = ClientConfig {
            coordinator: Some("127.0.0.1:7070".into()),
            token: Some("cohort_ab_cd".into()),
            ca: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        };
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "coordinater = 1").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a Cohort client config"));
    }
}
