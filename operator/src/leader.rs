//! Leader election with a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas can run and only one reconciles.
//!
//! The decision ([`lease_step`]) is pure; [`LeaderElector`] does the I/O.
//! Updates carry the Lease's `resourceVersion`, so two replicas racing for an
//! expired Lease cannot both win: the API server rejects the second write.

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

/// Decide from the Lease (if any) who may lead at `now`.
pub fn lease_step(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseStep {
    let Some(spec) = lease else {
        return LeaseStep::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseStep::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_second());
    match renewed {
        Some(t) if !holder.is_empty() && now.as_second() < t + duration => {
            LeaseStep::Wait { holder }
        }
        _ => LeaseStep::TakeOver,
    }
}

/// Holds (or waits for) the Lease `name` in a namespace.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    /// An elector for Lease `name`, identifying as `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// One round: `Ok(true)` while we hold the Lease after this call.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = lease_step(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
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
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(lease_step(None, "a", at(100)), LeaseStep::Create);
        assert_eq!(
            lease_step(Some(&spec("a", 0)), "a", at(100)),
            LeaseStep::Renew
        );
        assert_eq!(
            lease_step(Some(&spec("b", 90)), "a", at(100)),
            LeaseStep::Wait { holder: "b".into() }
        );
        assert_eq!(
            lease_step(Some(&spec("b", 85)), "a", at(100)),
            LeaseStep::TakeOver
        );
        // A released Lease (no holder) is free at once.
        let mut released = spec("b", 99);
        released.holder_identity = None;
        assert_eq!(
            lease_step(Some(&released), "a", at(100)),
            LeaseStep::TakeOver
        );
    }
}
