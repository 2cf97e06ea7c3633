//! `ride-operator`: reconciles RideTrainings into gangs of worker pods.
//! Talks to the cluster of the current kubeconfig (or in-cluster service
//! account), holds a Lease so only one replica reconciles, and serves
//! `/metrics`, `/healthz` and `/readyz`.

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use ride_operator::controller::{self, Context};
use ride_operator::leader::{LeaderElector, LeaseTiming};
use ride_operator::metrics::OperatorMetrics;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reconciles RideTraining resources into gangs of trainer pods"
)]
struct Args {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Run without a leader Lease (only with a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ride-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Lease duration in seconds: how long another replica waits after the
    /// last renewal it saw before taking over.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// The leader stops when it could not renew for this long (shorter than
    /// --lease-seconds, so it stops before anyone may take over).
    #[arg(long, default_value_t = 10)]
    lease_renew_deadline_seconds: u64,
    /// Seconds between Lease tries; also each Lease request's time limit.
    #[arg(long, default_value_t = 2)]
    lease_retry_seconds: u64,
    /// This replica's identity in the Lease and in Events (default: $HOSTNAME).
    #[arg(long)]
    identity: Option<String>,
    /// Seconds between progress polls of a training's rank 0.
    #[arg(long, default_value_t = 30)]
    progress_interval_seconds: u64,
    /// Reconciles running at once (0: unbounded). Bounding them keeps a burst
    /// of new trainings from queueing hundreds of requests at the API server.
    #[arg(long, default_value_t = 16)]
    max_concurrent_reconciles: u16,
    /// Log format: `json` (structured, one object per line) or `text`.
    #[arg(long, default_value = "json")]
    log_format: String,
    #[command(flatten)]
    pod_policy: ride_operator::pod_policy::PodPolicy,
    /// Where `/metrics` is served over TLS to callers whose bearer token a
    /// TokenReview authenticates and a SubjectAccessReview allows to get the
    /// non-resource URL /metrics (`off`: not served).
    #[arg(long, default_value = "0.0.0.0:8443")]
    secure_metrics_addr: String,
    /// PEM certificate chain for the TLS endpoint (default: a self-signed
    /// certificate made at start; scrapers then skip verification).
    #[arg(long, requires = "metrics_key_file")]
    metrics_cert_file: Option<std::path::PathBuf>,
    /// PEM private key for --metrics-cert-file.
    #[arg(long, requires = "metrics_cert_file")]
    metrics_key_file: Option<std::path::PathBuf>,
    /// Also serve `/metrics` without authentication on --metrics-addr (local
    /// runs, scrapers without tokens); off by default, when that port has
    /// only /healthz and /readyz.
    #[arg(long)]
    insecure_metrics: bool,
}

fn init_logs(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().flatten_event(true).init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format {other}: use json or text"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// One Lease round, limited to `limit`: a request that hangs must not
/// outlive the renew deadline.
async fn lease_try(elector: &LeaderElector, limit: Duration) -> Result<bool, String> {
    match tokio::time::timeout(limit, elector.try_acquire_or_renew()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
    }
}

/// Campaign until this replica leads (true) or the operator is told to stop
/// (false).
async fn campaign(
    elector: &LeaderElector,
    timing: &LeaseTiming,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut stop = stop.clone();
    loop {
        if *stop.borrow() {
            return false;
        }
        match lease_try(elector, timing.retry_period).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.retry_period) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

/// Renew the Lease until that fails: another replica took it, or it could
/// not be renewed within the renew deadline (shorter than the Lease, so this
/// replica stops before anyone may take over). Returns why.
async fn keep_renewing(elector: &LeaderElector, timing: &LeaseTiming) -> &'static str {
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(timing.retry_period).await;
        match lease_try(elector, timing.retry_period).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => return "another replica holds the lease",
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        if last_ok.elapsed() >= timing.renew_deadline {
            return "the lease could not be renewed within the renew deadline";
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format)?;
    let metrics = OperatorMetrics::new();
    let bound = metrics.serve(&args.metrics_addr, args.insecure_metrics)?;
    if args.insecure_metrics {
        tracing::info!(addr = %bound, "serving /metrics (unauthenticated), /healthz, /readyz");
    } else {
        tracing::info!(addr = %bound, "serving /healthz, /readyz");
    }
    let config = kube::Config::infer().await.context(
        "no Kubernetes configuration: set KUBECONFIG or run in a pod with a service account",
    )?;
    // Requests (reconciles, the Lease) with deadlines; watches without the
    // read limit, since a quiet watch is not a dead one.
    let client = Client::try_from(controller::request_client_config(config.clone()))
        .context("building the Kubernetes client")?;
    let watch_client = Client::try_from(controller::watch_client_config(config))
        .context("building the Kubernetes watch client")?;
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    if args.secure_metrics_addr != "off" {
        let certs = args
            .metrics_cert_file
            .as_deref()
            .zip(args.metrics_key_file.as_deref());
        let tls = ride_operator::secure_metrics::tls_config(certs)?;
        let reviewer = Arc::new(ride_operator::secure_metrics::Reviewer::new(client.clone()));
        let secure = ride_operator::secure_metrics::serve(
            &args.secure_metrics_addr,
            tls,
            metrics.clone(),
            reviewer,
        )
        .await?;
        tracing::info!(addr = %secure, "serving /metrics over TLS to authorised callers");
    }
    metrics.set_ready(true);
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("ride-operator-{}", std::process::id()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    let elector = if args.no_leader_election {
        None
    } else {
        let ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let timing = LeaseTiming::new(
            Duration::from_secs(args.lease_seconds),
            Duration::from_secs(args.lease_renew_deadline_seconds),
            Duration::from_secs(args.lease_retry_seconds),
        )
        .map_err(anyhow::Error::msg)?;
        let elector = LeaderElector::new(api, &args.lease_name, &identity, timing.duration);
        tracing::info!(lease = %args.lease_name, namespace = %ns, %identity, "leader election");
        Some((elector, timing))
    };

    // Lead, and on a lost Lease stop acting and stand by in this same
    // process: an API-server outage longer than the renew deadline costs a
    // new campaign, not a crash loop and the kubelet's restart backoff.
    loop {
        if let Some((elector, timing)) = &elector {
            tracing::info!(%identity, "waiting for the leader lease");
            if !campaign(elector, timing, &stop_rx).await {
                break;
            }
            tracing::info!(%identity, "leading");
            metrics.leader.set(1);
        }
        let ctx = Context::new(
            client.clone(),
            metrics.clone(),
            &identity,
            Duration::from_secs(args.progress_interval_seconds.max(1)),
            args.pod_policy.clone(),
        );
        let run = controller::run(
            ctx,
            watch_client.clone(),
            args.namespace.clone(),
            args.max_concurrent_reconciles,
            stopped(),
        );
        let Some((elector, timing)) = &elector else {
            run.await;
            break;
        };
        tokio::select! {
            _ = run => {
                metrics.leader.set(0);
                if let Err(e) = elector.release().await {
                    tracing::warn!(error = %e, "cannot release the lease");
                }
                break;
            }
            why = keep_renewing(elector, timing) => {
                // Dropping `run` stops the controller: no reconcile acts
                // after this line, before another replica may lead.
                metrics.stand_by();
                metrics.leadership_lost.inc();
                tracing::error!(reason = why, "lost leadership; stopped acting, standing by to campaign again");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}
