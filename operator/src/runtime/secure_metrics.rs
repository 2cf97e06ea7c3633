//! `/metrics` over TLS, for callers the API server vouches for: a bearer
//! token that a TokenReview authenticates and a SubjectAccessReview
//! authorises for `get` on the non-resource URL `/metrics` — what
//! controller-runtime's `WithAuthenticationAndAuthorization` filter does for
//! Kueue, JobSet and Kubeflow's Trainer. Decisions are cached briefly (by a
//! hash of the token), connections are bounded in number and time, and a
//! request head is read up to a small limit, so a slow or hostile client
//! neither wedges the endpoint nor costs the API server a review per scrape.

use crate::metrics::OperatorMetrics;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a review's answer is reused for the same token.
pub const DECISION_TTL: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The most a connection may take: handshake, request, reviews, answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// The largest request head read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Tokens whose decisions are cached at most.
const MAX_CACHED: usize = 4096;

/// What the API server says of a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token, or one the TokenReview does not authenticate.
    Unauthenticated(String),
    /// Authenticated as this user, not allowed to get /metrics.
    Forbidden(String),
    /// Authenticated and allowed.
    Allowed(String),
}

/// The HTTP answer to a request for `path` by a caller with `access`
/// (`None`: the path needs no review, or the request had none to make).
pub fn answer(path: &str, access: Option<&Access>) -> (u16, &'static str, String) {
    if path != "/metrics" {
        return (404, "Not Found", "only /metrics is served here\n".into());
    }
    match access {
        None | Some(Access::Unauthenticated(_)) => (
            401,
            "Unauthorized",
            "send a bearer token of a ServiceAccount (or user) allowed to get the non-resource URL /metrics\n".into(),
        ),
        Some(Access::Forbidden(user)) => (
            403,
            "Forbidden",
            format!("{user} may not get /metrics: bind it to the metrics-reader ClusterRole\n"),
        ),
        Some(Access::Allowed(_)) => (200, "OK", String::new()),
    }
}

/// The request line's path and the bearer token of a request head, if
/// it is a well-formed GET.
pub fn parse_head(head: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (method, target) = (request.next()?, request.next()?);
    if method != "GET" {
        return None;
    }
    let path = target.split('?').next()?.to_string();
    let token = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = value.trim();
        let (scheme, token) = value.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| token.trim().to_string())
    });
    Some((path, token))
}

/// Reviews tokens with the API server, remembering answers briefly.
pub struct Reviewer {
    client: Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Access)>>,
}

impl Reviewer {
    /// A reviewer asking through `client` (the operator's identity needs
    /// `create` on tokenreviews and subjectaccessreviews).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// What the API server says of `token`.
    pub async fn review(&self, token: &str) -> Access {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((at, access)) = self.lock().get(&key) {
            if at.elapsed() < DECISION_TTL {
                return access.clone();
            }
        }
        let access = match self.ask(token).await {
            Ok(a) => a,
            // Not cached: the next scrape asks again.
            Err(e) => return Access::Unauthenticated(format!("the review failed: {e}")),
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < DECISION_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), access.clone()));
        access
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Instant, Access)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<Access, kube::Error> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let status = reviews
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Ok(Access::Unauthenticated(
                    status.error.unwrap_or_else(|| "not authenticated".into()),
                ))
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let sars: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let allowed = sars
            .create(&PostParams::default(), &sar)
            .await?
            .status
            .is_some_and(|s| s.allowed);
        Ok(if allowed {
            Access::Allowed(name)
        } else {
            Access::Forbidden(name)
        })
    }
}

/// The TLS settings from a PEM certificate chain and key, or, without
/// them, a self-signed certificate made now (scrapers then skip
/// verification, as with controller-runtime's generated one).
pub fn tls_config(
    cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use anyhow::Context as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match cert_and_key {
        Some((cert, key)) => {
            let mut c = std::io::BufReader::new(
                std::fs::File::open(cert).with_context(|| format!("{}", cert.display()))?,
            );
            let certs = rustls_pemfile::certs(&mut c)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("certificates in {}", cert.display()))?;
            let mut k = std::io::BufReader::new(
                std::fs::File::open(key).with_context(|| format!("{}", key.display()))?,
            );
            let key = rustls_pemfile::private_key(&mut k)
                .with_context(|| format!("the key in {}", key.display()))?
                .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
            (certs, key)
        }
        None => {
            let made = rcgen::generate_simple_self_signed(vec![
                "ride-operator".to_string(),
                "localhost".to_string(),
            ])?;
            (
                vec![made.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der())),
            )
        }
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the metrics certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// Serve `/metrics` over TLS on `addr` in the background; the bound address.
pub async fn serve(
    addr: &str,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    metrics: Arc<OperatorMetrics>,
    reviewer: Arc<Reviewer>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for secure metrics: {e}"))?;
    let bound = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            // Over the bound: closed at once rather than queued.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let (acceptor, metrics, reviewer) = (
                acceptor.clone(),
                Arc::clone(&metrics),
                Arc::clone(&reviewer),
            );
            tokio::spawn(async move {
                let _slot = slot;
                let served = tokio::time::timeout(
                    CONNECTION_DEADLINE,
                    serve_one(acceptor, tcp, &metrics, &reviewer),
                );
                let _ = served.await;
            });
        }
    });
    Ok(bound)
}

async fn serve_one(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    metrics: &OperatorMetrics,
    reviewer: &Reviewer,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return respond(&mut tls, 431, "Request Header Fields Too Large", "").await;
        }
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let Some((path, token)) = parse_head(&head) else {
        return respond(&mut tls, 400, "Bad Request", "GET /metrics only\n").await;
    };
    let access = match (&token, path == "/metrics") {
        (Some(t), true) => Some(reviewer.review(t).await),
        _ => None,
    };
    let (code, reason, body) = answer(&path, access.as_ref());
    let body = if code == 200 { metrics.render() } else { body };
    respond(&mut tls, code, reason, &body).await
}

async fn respond<S: AsyncWriteExt + Unpin>(
    s: &mut S,
    code: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_the_path_and_only_a_bearer_token() {
        let h = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer abc.def\r\n\r\n";
        assert_eq!(
            parse_head(h),
            Some(("/metrics".into(), Some("abc.def".into())))
        );
        let basic = b"GET /metrics HTTP/1.1\r\nauthorization: Basic dXNlcg==\r\n\r\n";
        assert_eq!(parse_head(basic), Some(("/metrics".into(), None)));
        let empty = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n";
        assert_eq!(parse_head(empty), Some(("/metrics".into(), None)));
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_head(b"\xff\xfe"), None);
        assert_eq!(parse_head(b""), None);
    }

    #[test]
    fn answers_follow_authentication_then_authorisation() {
        assert_eq!(answer("/metrics", None).0, 401);
        assert_eq!(
            answer("/metrics", Some(&Access::Unauthenticated("bad".into()))).0,
            401
        );
        let (code, _, body) = answer(
            "/metrics",
            Some(&Access::Forbidden("system:serviceaccount:a:b".into())),
        );
        assert_eq!(code, 403);
        assert!(body.contains("metrics-reader"), "{body}");
        assert_eq!(
            answer("/metrics", Some(&Access::Allowed("u".into()))).0,
            200
        );
        assert_eq!(
            answer("/healthz", Some(&Access::Allowed("u".into()))).0,
            404
        );
    }

    #[test]
    fn a_self_signed_certificate_is_made_without_files() {
        assert!(tls_config(None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, "not a certificate").unwrap();
        std::fs::write(&k, "").unwrap();
        assert!(tls_config(Some((&c, &k))).is_err());
    }
}
