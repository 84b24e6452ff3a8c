//! The cluster's TLS, after kubeadm's: the coordinator creates a cluster CA
//! on first start and keeps it in its data dir; every connection in the
//! cluster is TLS under that CA, and plaintext is refused.
//!
//! - The coordinator serves with a certificate for [`COORDINATOR_NAME`]
//!   (and localhost, its host name and listen address, so outside clients
//!   can check it too), issued afresh at each start.
//! - An agent joins with a join token that carries the CA's fingerprint
//!   (`cohort_<id>_<secret>.<sha256 of the CA>`): it fetches the CA from the
//!   coordinator, accepts it only if the fingerprint matches, then asks
//!   `Cluster.Join` (with the token) to sign a key it made itself. From
//!   then on it and the coordinator know each other by certificate: the
//!   agent's names it ([`node_of`]) and carries [`AGENT_NAME`], which
//!   the coordinator checks when it calls the agent.
//! - Clients (the CLI, Flight SQL clients, executors) check the coordinator
//!   against the CA and authenticate with tokens.
//!
//! Every client checks the peer's name as well as its CA, so an agent's
//! certificate cannot stand in for the coordinator's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name on the coordinator's certificate that every client checks.
pub const COORDINATOR_NAME: &str = "cohort-coordinator";
/// The name on every agent's certificate that the coordinator checks.
pub const AGENT_NAME: &str = "cohort-agent";
/// An agent certificate's common name is this and the node's name.
const AGENT_CN_PREFIX: &str = "cohort agent ";
/// Certificates the CA signs are valid this long (the CA ten times as long).
const VALIDITY_DAYS: i64 = 365 * 5;

/// The cluster CA, with its key: the coordinator's alone.
pub struct ClusterCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// The CA in `dir` (`ca.pem`, and `ca.key` readable by its owner only),
    /// created there if there is none.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() {
            let pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?)
                .with_context(|| format!("{}: not a private key", key_path.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&pem, key)
                .with_context(|| format!("{}: not a CA certificate", cert_path.display()))?;
            return Ok(ClusterCa { pem, issuer });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Cohort cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        valid_for(&mut params, VALIDITY_DAYS * 10);
        let cert = params.self_signed(&key)?;
        // The key first: a certificate on disk means both are there.
        crate::coordinator::write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).with_context(|| format!("cannot write {}", cert_path.display()))?;
        tracing::info!(path = %cert_path.display(), "created the cluster CA");
        Ok(ClusterCa { pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// What join tokens carry: the SHA-256 of the CA certificate, hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.pem).expect("the CA's own PEM parses")
    }

    /// A fresh certificate and key for the coordinator, for `names` besides
    /// [`COORDINATOR_NAME`]: `(chain PEM, key PEM)`.
    pub fn coordinator_certificate(&self, names: &[String]) -> Result<(String, String)> {
        let mut all = vec![COORDINATOR_NAME.to_string()];
        all.extend(names.iter().filter(|n| !n.is_empty()).cloned());
        all.dedup();
        let mut params = CertificateParams::new(all)?;
        params.distinguished_name.push(DnType::CommonName, "cohort coordinator");
        let key = KeyPair::generate()?;
        let cert = self.sign(params, &key)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Signs the key in an agent's certificate request for node `node`.
    /// Only the request's key is used: the names are the CA's to choose.
    pub fn sign_agent(&self, node: &str, host: &str, csr_pem: &str) -> Result<String> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow::anyhow!("not a certificate request: {e}"))?;
        let mut names = vec![AGENT_NAME.to_string()];
        if !host.is_empty() && host != AGENT_NAME {
            names.push(host.to_string());
        }
        // A host that is no DNS name or address gets the fixed name only.
        let mut params = CertificateParams::new(names).or_else(|_| CertificateParams::new(vec![AGENT_NAME.into()]))?;
        params.distinguished_name.push(DnType::CommonName, format!("{AGENT_CN_PREFIX}{node}"));
        self.sign(params, &request.public_key)
    }

    fn sign(&self, mut params: CertificateParams, key: &impl rcgen::PublicKeyData) -> Result<String> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        valid_for(&mut params, VALIDITY_DAYS);
        let cert = params.signed_by(key, &self.issuer)?;
        // The chain: peers that pin the CA by fingerprint find it here.
        Ok(format!("{}{}", cert.pem(), self.pem))
    }
}

fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that disagree.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The SHA-256 of the first certificate in `pem`, hex.
pub fn fingerprint(pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("no certificate in the PEM text")?;
    Ok(hex(&Sha256::digest(der.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// A join token as agents are given it: the token, a dot, the CA's fingerprint.
pub fn join_token(token: &str, fingerprint: &str) -> String {
    format!("{token}.{fingerprint}")
}

/// A join token's token and the CA fingerprint it carries, if it carries one.
pub fn split_join_token(text: &str) -> (&str, Option<&str>) {
    match text.trim().rsplit_once('.') {
        Some((token, pin)) if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) => (token, Some(pin)),
        _ => (text.trim(), None),
    }
}

/// The node an agent certificate names; none for any other certificate.
pub fn node_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    name.strip_prefix(AGENT_CN_PREFIX).map(str::to_string)
}

/// How clients reach the coordinator: its CA, checked for [`COORDINATOR_NAME`].
pub fn coordinator_client(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(COORDINATOR_NAME)
}

/// `address` as the URL of a TLS endpoint.
pub fn https(address: &str) -> String {
    let bare = address.strip_prefix("https://").or_else(|| address.strip_prefix("http://")).unwrap_or(address);
    format!("https://{bare}")
}

/// A certificate the CA signed and its key: an agent's, or the coordinator's.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    /// The certificate, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
}

impl Credentials {
    const FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

    /// Credentials kept in `dir`, if all their files are there.
    pub fn load(dir: &Path) -> Option<Credentials> {
        let [ca, cert, key] = Self::FILES.map(|f| std::fs::read_to_string(dir.join(f)).ok());
        Some(Credentials { ca_pem: ca?, chain_pem: cert?, key_pem: key? })
    }

    /// Keeps them in `dir`, the key readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::coordinator::write_private(&dir.join("key.pem"), self.key_pem.as_bytes())?;
        for (file, text) in [("ca.pem", &self.ca_pem), ("cert.pem", &self.chain_pem)] {
            std::fs::write(dir.join(file), text)
                .with_context(|| format!("cannot write {}", dir.join(file).display()))?;
        }
        Ok(())
    }

    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.chain_pem, &self.key_pem)
    }

    /// Serving: clients may present a certificate of the cluster (agents
    /// do), or none (they bring tokens).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// Serving where every client must present a certificate of the cluster.
    pub fn server_mutual(&self) -> ServerTlsConfig {
        self.server().client_auth_optional(false)
    }

    /// Calling a peer named `name` (the coordinator or an agent) as these credentials.
    pub fn client(&self, name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(name)
            .identity(self.identity())
    }

    /// A rustls server config for the HTTP servers (HTTP/1.1 and HTTP/2).
    pub fn rustls_server(&self) -> Result<Arc<rustls::ServerConfig>> {
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("the certificate chain does not parse")?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("the private key does not parse")?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A fresh key and a request to sign it for node `node`: `(key PEM, request PEM)`.
pub fn certificate_request(node: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![AGENT_NAME.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, format!("{AGENT_CN_PREFIX}{node}"));
    let request = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), request.pem()?))
}

/// The coordinator's CA, fetched from `address` and accepted only if its
/// SHA-256 is `pin` (the fingerprint a join token carries). The coordinator
/// sends its CA in its chain; nothing is sent to it but a TLS hello.
pub async fn fetch_pinned_ca(address: &str, pin: &str) -> Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        pin: pin.to_ascii_lowercase(),
        found: Mutex::default(),
        mismatch: Mutex::default(),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await.with_context(|| format!("cannot reach {address}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(COORDINATOR_NAME)?;
    let handshake = connector.connect(name, tcp).await;
    if *verifier.mismatch.lock().expect("pinned CA") {
        return Err(PinMismatch(address.to_string()).into());
    }
    handshake.with_context(|| format!("TLS with {address}"))?;
    let found = verifier.found.lock().expect("pinned CA").take();
    match found {
        Some(der) => Ok(pem_of(&der)),
        None => bail!("{address} did not present a CA"),
    }
}

/// The server's CA is not the one a join token names.
#[derive(Debug, thiserror::Error)]
#[error(
    "the coordinator at {0} does not have the CA whose fingerprint the join token carries: \
     a wrong address, a token of another cluster, or someone in between"
)]
pub struct PinMismatch(String);

/// Accepts a server whose chain holds the pinned CA, and keeps that CA.
/// The real check comes after: the connection that follows trusts only
/// that CA and checks the coordinator's name.
#[derive(Debug)]
struct Pinned {
    pin: String,
    found: Mutex<Option<CertificateDer<'static>>>,
    mismatch: Mutex<bool>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(pinned) =
            std::iter::once(end_entity).chain(intermediates).find(|c| hex(&Sha256::digest(c.as_ref())) == self.pin)
        else {
            *self.mismatch.lock().expect("pinned CA") = true;
            return Err(rustls::Error::General("the CA does not match the join token's fingerprint".into()));
        };
        *self.found.lock().expect("pinned CA") = Some(pinned.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS listener for `axum::serve`: handshakes run beside the accept loop,
/// so a slow or hostile client holds up nobody else; failed ones are dropped.
pub struct TlsListener {
    accepted:
        tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

/// A handshake takes at most this long.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, accepted) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = accepted.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Names the directory of the agent's credentials, for Cohort's own executors.
pub const CREDENTIALS_ENV: &str = "COHORT_TLS_DIR";

/// The credentials of the agent that launched this executor, if one did.
pub fn executor_credentials() -> Result<Option<Credentials>> {
    let Some(dir) = std::env::var_os(CREDENTIALS_ENV) else { return Ok(None) };
    let dir = PathBuf::from(dir);
    Credentials::load(&dir).map(Some).with_context(|| format!("{CREDENTIALS_ENV}: no credentials in {}", dir.display()))
}

/// Where a cluster member keeps its credentials: `<data dir>/tls`.
pub fn credentials_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_carry_the_fingerprint_and_split_back() {
        let pin = "ab".repeat(32);
        let joined = join_token("cohort_1234abcd_00ff", &pin);
        assert_eq!(split_join_token(&joined), ("cohort_1234abcd_00ff", Some(pin.as_str())));
        assert_eq!(split_join_token("cohort_1234abcd_00ff"), ("cohort_1234abcd_00ff", None));
        assert_eq!(split_join_token("cohort_x.notahash"), ("cohort_x.notahash", None));
    }

    #[test]
    fn the_ca_persists_and_signs_agents_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let again = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint(), "a restarted coordinator keeps its CA");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);

        let (_key, request) = certificate_request("node-1").unwrap();
        let chain = again.sign_agent("node-1", "10.0.0.7", &request).unwrap();
        let certs: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(certs.len(), 2, "the certificate, then the CA");
        assert_eq!(node_of(&certs[0]).as_deref(), Some("node-1"));
        assert_eq!(hex(&Sha256::digest(certs[1].as_ref())), ca.fingerprint());
        let (coordinator, _) = ca.coordinator_certificate(&["localhost".into()]).unwrap();
        let leaf = CertificateDer::from_pem_slice(coordinator.as_bytes()).unwrap();
        assert_eq!(node_of(&leaf), None, "the coordinator's certificate names no node");
        assert!(again.sign_agent("node-1", "", "not a request").is_err());
    }
}
