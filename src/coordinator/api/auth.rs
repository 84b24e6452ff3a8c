//! Authentication at the front doors: every gRPC call (the CLI's, the
//! agents', Flight SQL's) and every HTTP API call carries a bearer token,
//! which the core resolves to a [`Principal`] before the handler runs.
//! Handlers then ask the core whether that principal may do what it asks.
//!
//! Tokens travel as `authorization: Bearer TOKEN`, or as HTTP Basic
//! credentials whose password is the token (Flight SQL clients such as
//! ADBC send `username`/`password` to `Handshake`, which answers with the
//! bearer token to use from then on). A joined agent presents no token:
//! its TLS client certificate names it ([`Principal::Node`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::HeaderMap;

use crate::coordinator::CoreHandle;
use crate::coordinator::core::CoordinatorError;
use crate::coordinator::core::auth::{HOW_TO_GET_A_TOKEN, Principal};

/// The token a request carries, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Go's Flight client (under ADBC) sends it unpadded.
        let encoded = rest.trim().trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()?;
        let (_user, password) =
            String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
        return Some(password);
    }
    None
}

/// A fresh token from the kernel's randomness: `(id, token)`.
pub fn random_token() -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::coordinator::core::auth::new_token(&bytes))
}

/// The caller of a request, or why it is refused.
pub async fn principal(core: &CoreHandle, token: Option<String>) -> Result<Principal, CoordinatorError> {
    let token = token.ok_or_else(|| CoordinatorError::Unauthenticated(HOW_TO_GET_A_TOKEN.into()))?;
    core.call(move |c| c.authenticate(&token)).await?
}

/// The gRPC service agents call; join tokens reach nothing else.
const CLUSTER_SERVICE: &str = "/cohort.v1.Cluster/";

/// The token the caller presented, kept for Flight SQL's handshake to hand back.
#[derive(Clone, Debug)]
pub struct Presented(pub String);

/// A tower layer for the gRPC server: authenticates each call and puts the
/// [`Principal`] in its extensions; refuses calls without a valid token.
#[derive(Clone)]
pub struct AuthLayer {
    pub core: CoreHandle,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated { inner, core: self.core.clone() }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    core: CoreHandle,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone may not be ready; the one polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let core = self.core.clone();
        Box::pin(async move {
            // A join token may come with its CA fingerprint: the token is what precedes it.
            let token = bearer(request.headers()).map(|t| crate::tls::split_join_token(&t).0.to_string());
            let agents_only = request.uri().path().starts_with(CLUSTER_SERVICE);
            let node = (token.is_none() && agents_only).then(|| certified_node(&request)).flatten();
            let who = match node {
                Some(name) => Ok(Principal::Node { name }),
                None => principal(&core, token.clone()).await,
            };
            match who {
                Ok(who @ Principal::Agent { .. }) if !agents_only => {
                    let e = CoordinatorError::Forbidden(format!("{who} is a join token: it only joins agents"));
                    Ok(super::grpc::status_of(e).into_http())
                }
                Ok(who) => {
                    request.extensions_mut().insert(who);
                    if let Some(token) = token {
                        request.extensions_mut().insert(Presented(token));
                    }
                    inner.call(request).await
                }
                Err(e) => Ok(super::grpc::status_of(e).into_http()),
            }
        })
    }
}

/// The node named by the client certificate the caller presented (which
/// TLS has checked against the cluster CA), if it presented an agent's.
fn certified_node<B>(request: &http::Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    crate::tls::node_of(certs.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_credentials_with_or_without_padding() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert_eq!(bearer(&headers("Bearer cohort_a_b")).as_deref(), Some("cohort_a_b"));
        // "me:cohort_a_b", padded and not.
        assert_eq!(bearer(&headers("Basic bWU6Y29ob3J0X2FfYg==")).as_deref(), Some("cohort_a_b"));
        assert_eq!(bearer(&headers("Basic bWU6Y29ob3J0X2FfYg")).as_deref(), Some("cohort_a_b"));
        assert_eq!(bearer(&headers("Digest x")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
