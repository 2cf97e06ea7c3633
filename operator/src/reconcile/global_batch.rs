//! What a resize does to the recipe's global batch (per-rank batch × ranks ×
//! accumulation steps): the trainer keeps it on an elastic resume by changing
//! its accumulation steps where a whole number does, and otherwise runs the
//! config's accumulation on the new world with the LR scaled to match. The
//! operator works out the same arithmetic from the spec so that the Event and
//! `status.globalBatch` say what happened before the trainer's log does.

use crate::crd::{GlobalBatchStatus, RideTrainingSpec};

/// The override keys that set the per-rank batch and the accumulation steps.
const BATCH_KEY: &str = "DATA.BATCH_SIZE";
const ACCUMULATION_KEY: &str = "TRAIN.ACCUMULATION_STEPS";

fn override_u64(spec: &RideTrainingSpec, key: &str) -> Option<u64> {
    spec.trainer
        .overrides
        .get(key)
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The global batch of a gang of `world` workers, against the recipe's
/// (`workers.replicas` workers at the configured accumulation).
pub fn at_world(spec: &RideTrainingSpec, world: i32) -> GlobalBatchStatus {
    let per_worker = spec.workers.gpus_per_worker.max(1) as u64;
    let recipe_ranks = spec.workers.replicas.max(1) as u64 * per_worker;
    let ranks = world.max(0) as u64 * per_worker;
    // Unset (or 0, which the trainer reads as 1): the reference configs' 1.
    let recipe_accumulation = override_u64(spec, ACCUMULATION_KEY).unwrap_or(1).max(1);
    let kept = ride_contract::keep_global_batch(recipe_ranks, recipe_accumulation, ranks);
    let accumulation = kept.unwrap_or(recipe_accumulation);
    let batch = override_u64(spec, BATCH_KEY);
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    GlobalBatchStatus {
        ranks: clamp(ranks),
        accumulation_steps: clamp(accumulation),
        kept: kept.is_some(),
        per_rank_batch: batch.map(clamp),
        images: batch.map(|b| clamp(b.saturating_mul(ranks).saturating_mul(accumulation))),
        recipe_images: batch.map(|b| {
            clamp(
                b.saturating_mul(recipe_ranks)
                    .saturating_mul(recipe_accumulation),
            )
        }),
    }
}

/// The Event a resize to `g` deserves: (reason, message, warning).
pub fn resize_event(
    spec: &RideTrainingSpec,
    g: &GlobalBatchStatus,
) -> (&'static str, String, bool) {
    let per_worker = spec.workers.gpus_per_worker.max(1) as i64;
    let recipe_ranks = spec.workers.replicas.max(1) as i64 * per_worker;
    let recipe_accumulation = override_u64(spec, ACCUMULATION_KEY).unwrap_or(1).max(1);
    let images = match (g.images, g.recipe_images) {
        (Some(now), Some(recipe)) => format!(" ({now} images per step instead of {recipe})"),
        _ => String::new(),
    };
    if g.kept {
        (
            "GlobalBatchKept",
            format!(
                "{} ranks with {} accumulation steps keep the recipe's global batch of {recipe_ranks} ranks x {recipe_accumulation}",
                g.ranks, g.accumulation_steps
            ),
            false,
        )
    } else {
        (
            "GlobalBatchChanged",
            format!(
                "{} ranks cannot keep the recipe's global batch of {recipe_ranks} ranks x {recipe_accumulation} accumulation steps with a whole number of steps: \
                 it is now {} ranks x {}{images}, and the trainer scales the LR with it; \
                 choose workers.minReplicas so that the rank count divides {}",
                g.ranks,
                g.ranks,
                g.accumulation_steps,
                recipe_ranks.saturating_mul(recipe_accumulation as i64)
            ),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: i32, gpus: i32, overrides: &[(&str, &str)]) -> RideTrainingSpec {
        let mut s: RideTrainingSpec = serde_json::from_value(serde_json::json!({
            "image": "ride-trainer:test",
            "trainer": {"config": "c.yaml"},
            "workers": {"replicas": replicas, "gpusPerWorker": gpus},
            "checkpoint": {"uri": "s3://b/t"},
        }))
        .unwrap();
        for (k, v) in overrides {
            s.trainer.overrides.insert((*k).into(), (*v).into());
        }
        s
    }

    #[test]
    fn a_shrink_keeps_the_batch_where_the_ranks_divide_it() {
        let s = spec(
            8,
            1,
            &[("DATA.BATCH_SIZE", "64"), ("TRAIN.ACCUMULATION_STEPS", "2")],
        );
        let g = at_world(&s, 4);
        assert!(g.kept);
        assert_eq!((g.ranks, g.accumulation_steps), (4, 4));
        assert_eq!((g.images, g.recipe_images), (Some(1024), Some(1024)));
        assert_eq!(resize_event(&s, &g).0, "GlobalBatchKept");
    }

    #[test]
    fn a_shrink_that_cannot_keep_it_says_what_it_becomes() {
        let s = spec(
            8,
            1,
            &[("DATA.BATCH_SIZE", "64"), ("TRAIN.ACCUMULATION_STEPS", "2")],
        );
        let g = at_world(&s, 5);
        assert!(!g.kept);
        assert_eq!((g.ranks, g.accumulation_steps), (5, 2));
        assert_eq!(g.images, Some(640));
        let (reason, message, warning) = resize_event(&s, &g);
        assert_eq!(reason, "GlobalBatchChanged");
        assert!(warning);
        assert!(
            message.contains("640 images per step instead of 1024"),
            "{message}"
        );
        assert!(message.contains("divides 16"), "{message}");
    }

    #[test]
    fn ranks_count_gpus_and_unset_keys_mean_the_configs_own() {
        let s = spec(4, 2, &[]);
        let g = at_world(&s, 2);
        assert!(g.kept);
        assert_eq!((g.ranks, g.accumulation_steps, g.images), (4, 2, None));
        // A hostile override is not a number: the config's own value.
        let s = spec(
            4,
            1,
            &[("TRAIN.ACCUMULATION_STEPS", "99999999999999999999999")],
        );
        assert_eq!(at_world(&s, 3).accumulation_steps, 1);
    }
}
