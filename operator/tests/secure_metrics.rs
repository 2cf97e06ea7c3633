//! The operator's `/metrics` over TLS on a real control plane: a caller
//! is authenticated by a TokenReview and authorised by a
//! SubjectAccessReview for `get` on the non-resource URL `/metrics`, as
//! controller-runtime does for Kueue and JobSet.

mod common;

use common::{get_secure_metrics, service_account_token, setup, Operator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_the_api_server_allows_to_read_them() {
    let (cluster, _client, _agents) = setup(&[]).await;
    let op = Operator::start(&cluster.kubeconfig, "op-tls", &["--no-leader-election"]);
    let port = op.secure_metrics_port;
    let reader = service_account_token(&cluster, "scraper", true);
    let nobody = service_account_token(&cluster, "nobody", false);
    // The endpoint is up once it answers at all.
    common::eventually(
        30,
        "the TLS endpoint",
        || async { (get_secure_metrics(port, None).0 != 0).then_some(()) },
        || op.log_text(),
    )
    .await;

    let (code, body) = get_secure_metrics(port, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = get_secure_metrics(port, Some("not-a-token"));
    assert_eq!(code, 401, "{body}");
    let (code, body) = get_secure_metrics(port, Some(&nobody));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:default:nobody"),
        "{body}"
    );
    let (code, body) = get_secure_metrics(port, Some(&reader));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ride_operator_leader"), "{body}");
    // Answers are reused briefly, so repeated scrapes cost no reviews; the
    // cached answer is the same answer.
    for _ in 0..5 {
        assert_eq!(get_secure_metrics(port, Some(&reader)).0, 200);
        assert_eq!(get_secure_metrics(port, Some(&nobody)).0, 403);
    }
    // The probes stay on the plain port.
    let health = op.http_get("/healthz").unwrap_or_default();
    assert!(health.contains(" 200 OK"), "{health}");
}
