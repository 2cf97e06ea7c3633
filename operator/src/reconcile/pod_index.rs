//! Which cached pods belong to which training, kept beside the pod cache.
//!
//! A reconcile needs its own training's pods. kube-runtime's store can only
//! be scanned whole (`state_filter`), and at 2,000 trainings × 2 workers
//! that scan was most of the operator's CPU. This index is fed the same
//! watch events as the store, just before it, so both show the same world:
//! events apply one by one, and a relist (`Init` … `InitDone`) builds a
//! fresh index that replaces the old one at `InitDone`, as the store swaps
//! its buffer then.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use std::collections::{BTreeSet, HashMap};

/// A namespace and a name in it.
type Key = (String, String);

/// The training label's value per pod, and the pods per training.
#[derive(Default, Debug)]
struct Tables {
    /// (namespace, training) → names of its pods.
    pods_of: HashMap<Key, BTreeSet<String>>,
    /// (namespace, pod) → the training its label names.
    training_of: HashMap<Key, String>,
}

impl Tables {
    fn insert(&mut self, label: &str, pod: &Pod) {
        let Some((ns, name)) = ns_and_name(pod) else {
            return;
        };
        self.remove(&ns, &name);
        let Some(training) = pod.metadata.labels.as_ref().and_then(|l| l.get(label)) else {
            return;
        };
        self.pods_of
            .entry((ns.clone(), training.clone()))
            .or_default()
            .insert(name.clone());
        self.training_of.insert((ns, name), training.clone());
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let pod = (ns.to_owned(), name.to_owned());
        let Some(training) = self.training_of.remove(&pod) else {
            return;
        };
        let key = (pod.0, training);
        if let Some(names) = self.pods_of.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.pods_of.remove(&key);
            }
        }
    }
}

fn ns_and_name(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

/// Pods by the training their label (`label`) names.
#[derive(Debug)]
pub struct PodIndex {
    label: String,
    live: Tables,
    /// Filled during a relist; replaces `live` when it is done.
    relisting: Option<Tables>,
}

impl PodIndex {
    /// An empty index of pods by the value of their label `label`.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            live: Tables::default(),
            relisting: None,
        }
    }

    /// Take in one watch event, as the pod cache does.
    pub fn apply(&mut self, event: &Event<Pod>) {
        match event {
            Event::Apply(pod) => self.live.insert(&self.label, pod),
            Event::Delete(pod) => {
                if let Some((ns, name)) = ns_and_name(pod) {
                    self.live.remove(&ns, &name);
                }
            }
            Event::Init => self.relisting = Some(Tables::default()),
            Event::InitApply(pod) => {
                if let Some(next) = self.relisting.as_mut() {
                    next.insert(&self.label, pod);
                }
            }
            Event::InitDone => {
                if let Some(next) = self.relisting.take() {
                    self.live = next;
                }
            }
        }
    }

    /// The names of the pods in `namespace` labelled with `training`.
    pub fn pods_of(&self, namespace: &str, training: &str) -> Vec<String> {
        self.live
            .pods_of
            .get(&(namespace.to_owned(), training.to_owned()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many pods the index holds.
    pub fn len(&self) -> usize {
        self.live.training_of.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "ride.dev/training";

    fn pod(ns: &str, name: &str, training: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        if let Some(t) = training {
            p.metadata.labels = Some([(LABEL.to_owned(), t.to_owned())].into());
        }
        p
    }

    #[test]
    fn pods_are_found_by_training_and_namespace_and_leave_when_deleted() {
        let mut index = PodIndex::new(LABEL);
        index.apply(&Event::Apply(pod("a", "t-0", Some("t"))));
        index.apply(&Event::Apply(pod("a", "t-1", Some("t"))));
        index.apply(&Event::Apply(pod("b", "t-0", Some("t"))));
        index.apply(&Event::Apply(pod("a", "u-0", Some("u"))));
        assert_eq!(index.pods_of("a", "t"), ["t-0", "t-1"]);
        assert_eq!(index.pods_of("b", "t"), ["t-0"]);
        assert!(index.pods_of("c", "t").is_empty());
        index.apply(&Event::Delete(pod("a", "t-0", Some("t"))));
        assert_eq!(index.pods_of("a", "t"), ["t-1"]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_relabelled_pod_moves_and_an_unlabelled_one_goes() {
        let mut index = PodIndex::new(LABEL);
        index.apply(&Event::Apply(pod("a", "p", Some("t"))));
        // A tenant may relabel a pod: it then belongs to the other one.
        index.apply(&Event::Apply(pod("a", "p", Some("u"))));
        assert!(index.pods_of("a", "t").is_empty());
        assert_eq!(index.pods_of("a", "u"), ["p"]);
        index.apply(&Event::Apply(pod("a", "p", None)));
        assert!(index.pods_of("a", "u").is_empty());
        assert!(index.is_empty());
        // Its deletion afterwards finds nothing to remove.
        index.apply(&Event::Delete(pod("a", "p", Some("u"))));
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_it_is_done() {
        let mut index = PodIndex::new(LABEL);
        index.apply(&Event::Apply(pod("a", "gone", Some("t"))));
        index.apply(&Event::Apply(pod("a", "kept", Some("t"))));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "kept", Some("t"))));
        index.apply(&Event::InitApply(pod("a", "new", Some("t"))));
        // Until the relist is done, the index shows what the cache shows.
        assert_eq!(index.pods_of("a", "t"), ["gone", "kept"]);
        index.apply(&Event::InitDone);
        // A pod deleted while the watch was down is gone with the relist.
        assert_eq!(index.pods_of("a", "t"), ["kept", "new"]);
        // An InitApply outside a relist changes nothing.
        index.apply(&Event::InitApply(pod("a", "stray", Some("t"))));
        assert_eq!(index.len(), 2);
    }
}
