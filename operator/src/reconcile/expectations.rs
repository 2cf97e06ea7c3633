//! What this operator did that its watch caches may not show yet, as
//! Kubernetes' ReplicaSet and Job controllers keep it ("expectations"):
//! the pods it created and deleted and the status it wrote, by training.
//!
//! A decision made on a cache that does not show the operator's own last
//! actions can undo them: a created worker not yet in the pod cache looks
//! like a lost one, a status not yet in the training cache is an older
//! attempt's. So a training with outstanding expectations is not decided
//! until its watch events have arrived (they trigger its reconcile), and
//! once they are older than [`EXPECTATION_TTL`] (a watch that lost events)
//! the controller reads the API server once instead of its caches.
//!
//! Pure bookkeeping: the controller feeds it what it did and what its
//! caches show, and the clock.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long expectations may stay unmet before the caches are distrusted
/// and the API server is read instead (Kubernetes' controllers use 5
/// minutes; a watch event normally lands within a second).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// One training's outstanding expectations.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// Uids of pods created (applied) and not yet seen in the pod cache.
    created: BTreeSet<String>,
    /// Uids of pods deleted that the pod cache still shows as not deleting.
    deleted: BTreeSet<String>,
    /// Uids of pods the API server no longer has (a force-delete, or a
    /// delete answered NotFound) that the pod cache still shows: deciding
    /// on them again would only delete them again.
    gone: BTreeSet<String>,
    /// The training's resourceVersion our last status write replaced: while
    /// the training cache still holds it, it predates that write.
    replaced_version: Option<String>,
    /// When the oldest of them was recorded.
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.deleted.is_empty()
            && self.gone.is_empty()
            && self.replaced_version.is_none()
    }
}

/// A pod as the cache shows it, for [`Expectations::check`].
#[derive(Clone, Copy, Debug)]
pub struct CachedPod<'a> {
    /// Its uid.
    pub uid: &'a str,
    /// Whether it carries a deletionTimestamp.
    pub deleting: bool,
}

/// Whether a training's caches show everything the operator did to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing outstanding: decide on the caches.
    Met,
    /// Still waiting for the caches to show `what`; the watch events that
    /// show it trigger the next reconcile.
    Waiting {
        /// What is not yet seen, for logs.
        what: String,
    },
    /// Outstanding for longer than [`EXPECTATION_TTL`]: forget them and read
    /// the API server this once.
    Expired {
        /// What was never seen, for logs.
        what: String,
    },
}

/// Outstanding expectations of every training, by uid.
#[derive(Debug, Default)]
pub struct Expectations {
    by_training: HashMap<String, Pending>,
}

impl Expectations {
    fn pending(&mut self, key: &str, now: Instant) -> &mut Pending {
        let p = self.by_training.entry(key.to_string()).or_default();
        p.since.get_or_insert(now);
        p
    }

    /// We created (applied) the pod with `uid`.
    pub fn created(&mut self, key: &str, uid: &str, now: Instant) {
        self.pending(key, now).created.insert(uid.to_string());
    }

    /// We deleted the pod with `uid`.
    pub fn deleted(&mut self, key: &str, uid: &str, now: Instant) {
        self.pending(key, now).deleted.insert(uid.to_string());
    }

    /// The pod with `uid` no longer exists on the API server.
    pub fn gone(&mut self, key: &str, uid: &str, now: Instant) {
        self.pending(key, now).gone.insert(uid.to_string());
    }

    /// Our status write replaced the training's resourceVersion `version`.
    pub fn wrote_status(&mut self, key: &str, version: &str, now: Instant) {
        self.pending(key, now).replaced_version = Some(version.to_string());
    }

    /// Whether the caches, holding the training at `version` and `pods`
    /// (the pods labelled with its name), show what was done to it; what
    /// they show is forgotten.
    pub fn check<'a>(
        &mut self,
        key: &str,
        version: Option<&str>,
        pods: impl IntoIterator<Item = CachedPod<'a>>,
        now: Instant,
    ) -> Verdict {
        let Some(p) = self.by_training.get_mut(key) else {
            return Verdict::Met;
        };
        let pods: Vec<CachedPod<'a>> = pods.into_iter().collect();
        let present = |uid: &str| pods.iter().find(|c| c.uid == uid);
        p.created.retain(|uid| present(uid).is_none());
        // Gone, or shown going: the deletion is seen either way.
        p.deleted
            .retain(|uid| present(uid).is_some_and(|c| !c.deleting));
        p.gone.retain(|uid| present(uid).is_some());
        if p.replaced_version.as_deref() != version || version.is_none() {
            p.replaced_version = None;
        }
        if p.is_empty() {
            self.by_training.remove(key);
            return Verdict::Met;
        }
        let what = format!(
            "{} created, {} deleted and {} removed pods not yet seen{}",
            p.created.len(),
            p.deleted.len(),
            p.gone.len(),
            if p.replaced_version.is_some() {
                ", the status write not yet seen"
            } else {
                ""
            }
        );
        let expired = p
            .since
            .is_some_and(|t| now.saturating_duration_since(t) >= EXPECTATION_TTL);
        if expired {
            self.by_training.remove(key);
            Verdict::Expired { what }
        } else {
            Verdict::Waiting { what }
        }
    }

    /// Forget a training (gone, or read from the API server).
    pub fn forget(&mut self, key: &str) {
        self.by_training.remove(key);
    }

    /// Keep only the trainings whose uids are in `live`.
    pub fn retain(&mut self, live: &std::collections::HashSet<String>) {
        self.by_training.retain(|k, _| live.contains(k));
    }

    /// Trainings with outstanding expectations.
    pub fn len(&self) -> usize {
        self.by_training.len()
    }

    /// Whether no training has outstanding expectations.
    pub fn is_empty(&self) -> bool {
        self.by_training.is_empty()
    }

    /// The keys with outstanding expectations.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_training.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, deleting: bool) -> CachedPod<'_> {
        CachedPod { uid, deleting }
    }

    #[test]
    fn a_created_pod_is_waited_for_until_the_cache_shows_it() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        assert_eq!(e.check("t", Some("5"), [], t0), Verdict::Met);
        e.created("t", "a", t0);
        e.created("t", "b", t0);
        let v = e.check("t", Some("5"), [pod("a", false)], t0);
        assert!(matches!(&v, Verdict::Waiting { what } if what.starts_with("1 created")));
        assert_eq!(
            e.check("t", Some("5"), [pod("a", false), pod("b", false)], t0),
            Verdict::Met
        );
        assert!(e.is_empty(), "met expectations are forgotten");
    }

    #[test]
    fn a_deleted_pod_is_seen_when_it_is_gone_or_shown_deleting() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.deleted("t", "a", t0);
        e.deleted("t", "b", t0);
        assert!(matches!(
            e.check("t", None, [pod("a", false), pod("b", false)], t0),
            Verdict::Waiting { .. }
        ));
        assert_eq!(e.check("t", None, [pod("a", true)], t0), Verdict::Met);
    }

    #[test]
    fn a_removed_pod_is_waited_for_until_the_cache_drops_it() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.gone("t", "a", t0);
        // Shown deleting is not enough: it is still there to decide on.
        assert!(matches!(
            e.check("t", None, [pod("a", true)], t0),
            Verdict::Waiting { what } if what.contains("1 removed")
        ));
        assert_eq!(e.check("t", None, [], t0), Verdict::Met);
    }

    #[test]
    fn a_status_write_is_seen_once_the_cache_moved_past_the_version_it_replaced() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.wrote_status("t", "7", t0);
        assert!(matches!(
            e.check("t", Some("7"), [], t0),
            Verdict::Waiting { what } if what.contains("status")
        ));
        assert_eq!(e.check("t", Some("9"), [], t0), Verdict::Met);
    }

    #[test]
    fn expectations_older_than_the_ttl_expire_once_and_are_forgotten() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.created("t", "a", t0);
        e.created("u", "x", t0);
        let later = t0 + EXPECTATION_TTL;
        assert!(matches!(
            e.check("t", None, [], later),
            Verdict::Expired { .. }
        ));
        assert_eq!(e.check("t", None, [], later), Verdict::Met);
        // Others are kept until swept.
        assert_eq!(e.len(), 1);
        e.retain(&Default::default());
        assert!(e.is_empty());
    }

    #[test]
    fn trainings_are_kept_apart() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.created("t", "a", t0);
        assert_eq!(e.check("u", None, [], t0), Verdict::Met);
        assert!(matches!(
            e.check("t", None, [], t0),
            Verdict::Waiting { .. }
        ));
        e.forget("t");
        assert_eq!(e.check("t", None, [], t0), Verdict::Met);
    }
}
