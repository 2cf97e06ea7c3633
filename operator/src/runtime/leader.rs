//! Leader election with a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas can run and only one reconciles.
//!
//! The decision ([`lease_step`]) is pure; [`LeaderElector`] does the I/O.
//! Updates carry the Lease's `resourceVersion`, so two replicas racing for an
//! expired Lease cannot both win: the API server rejects the second write.
//!
//! As in client-go, expiry is judged by this replica's own monotonic clock:
//! a Lease is expired once its record has not changed for a whole lease
//! duration since *we* saw it change, whatever time the holder wrote into
//! it. Clock skew between replicas therefore cannot make a live Lease look
//! expired. The holder gives up after its renew deadline, which is shorter
//! than the duration, so it stops before anyone may take over.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::Duration;

/// What to do with the Lease as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease yet: create one naming us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Someone else's and expired: take it over.
    TakeOver,
    /// Someone else's and live: wait.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// Decide from the Lease (if any) who may lead, given how long its record
/// has been seen unchanged by this replica's clock.
pub fn lease_step(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> LeaseStep {
    let Some(spec) = lease else {
        return LeaseStep::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseStep::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if !holder.is_empty() && unchanged_for < duration {
        LeaseStep::Wait { holder }
    } else {
        LeaseStep::TakeOver
    }
}

/// The timing of leader election, checked for consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease not renewed stays another replica's.
    pub duration: Duration,
    /// The holder gives up when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Time between tries (also each request's time limit).
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Timing with `retry_period < renew_deadline < duration`, else an error
    /// saying which flag to change.
    pub fn new(
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, String> {
        if renew_deadline >= duration {
            return Err(format!(
                "--lease-renew-deadline-seconds ({}) must be shorter than --lease-seconds ({}): the holder must stop before others may take over",
                renew_deadline.as_secs(),
                duration.as_secs()
            ));
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(format!(
                "--lease-retry-seconds ({}) must be above 0 and shorter than --lease-renew-deadline-seconds ({})",
                retry_period.as_secs(),
                renew_deadline.as_secs()
            ));
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// Holds (or waits for) the Lease `name` in a namespace.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's `resourceVersion` as last seen, and since when (our clock).
    observed: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl LeaderElector {
    /// An elector for Lease `name`, identifying as `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// How long the Lease's record has stood still by our clock.
    fn unchanged_for(&self, lease: Option<&Lease>) -> Duration {
        let version = lease
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let mut seen = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match &*seen {
            Some((v, since)) if *v == version => since.elapsed(),
            _ => {
                *seen = Some((version, std::time::Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One round: `Ok(true)` while we hold the Lease after this call.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = lease_step(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            self.unchanged_for(current.as_ref()),
        );
        let mut spec = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        let result = match step {
            LeaseStep::Wait { .. } => return Ok(false),
            LeaseStep::Create => {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(0);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            LeaseStep::Renew | LeaseStep::TakeOver => {
                if step == LeaseStep::TakeOver {
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                // Replace keeps the read resourceVersion: a concurrent writer wins, we retry.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn lease_decisions() {
        let secs = Duration::from_secs;
        assert_eq!(lease_step(None, "a", secs(0)), LeaseStep::Create);
        assert_eq!(
            lease_step(Some(&spec("a", 0)), "a", secs(0)),
            LeaseStep::Renew
        );
        assert_eq!(
            lease_step(Some(&spec("b", 90)), "a", secs(10)),
            LeaseStep::Wait { holder: "b".into() }
        );
        assert_eq!(
            lease_step(Some(&spec("b", 85)), "a", secs(15)),
            LeaseStep::TakeOver
        );
        // A released Lease (no holder) is free at once.
        let mut released = spec("b", 99);
        released.holder_identity = None;
        assert_eq!(
            lease_step(Some(&released), "a", secs(0)),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn the_holders_clock_does_not_decide_expiry() {
        // The holder's clock is an hour behind: its renewTime looks ancient,
        // but the record just changed, so it is live.
        let behind = spec("b", Timestamp::now().as_second() - 3600);
        assert_eq!(
            lease_step(Some(&behind), "a", Duration::ZERO),
            LeaseStep::Wait { holder: "b".into() }
        );
        // An hour ahead: a renewTime in the future does not keep a Lease
        // alive once it has stood still for its duration.
        let ahead = spec("b", Timestamp::now().as_second() + 3600);
        assert_eq!(
            lease_step(Some(&ahead), "a", Duration::from_secs(15)),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn the_renew_deadline_is_shorter_than_the_lease() {
        let secs = Duration::from_secs;
        assert!(LeaseTiming::new(secs(15), secs(10), secs(2)).is_ok());
        let e = LeaseTiming::new(secs(15), secs(15), secs(2)).unwrap_err();
        assert!(e.contains("--lease-renew-deadline-seconds"), "{e}");
        assert!(LeaseTiming::new(secs(15), secs(10), secs(10)).is_err());
        assert!(LeaseTiming::new(secs(15), secs(10), secs(0)).is_err());
    }
}
