//! What a trainer reports is tenant input: the image is the tenant's, so
//! rank 0's `/progress` answer and its termination message can say
//! anything. Before any of it reaches status, the lifecycle or a metric, a
//! report is checked here: numbers within ranges every later computation
//! can take without overflow, floats finite, counters consistent
//! (`step <= totalSteps`, `epoch <= epochs`, a checkpoint no newer than the
//! step), times no earlier than the training and no later than now (give or
//! take [`MAX_CLOCK_SKEW_SECONDS`]), strings bounded. A report that fails is
//! dropped whole, naming the field; the message, the one free text, is
//! shortened instead.

use ride_contract::Progress;

/// Most optimiser steps (or epochs) a report may claim: 2^53, so that every
/// count is exact as an `f64`, fits an `i64`, and `step * 100` cannot overflow.
pub const MAX_STEPS: u64 = 1 << 53;
/// Most epochs a report may claim.
pub const MAX_EPOCHS: u64 = 10_000_000;
/// Most ranks a report may claim (the CRD allows 4096 workers × 16 GPUs).
pub const MAX_WORLD_SIZE: u32 = 1 << 20;
/// How far a trainer's clock may run ahead of the operator's, or a time
/// before the training's creation, and still be believed.
pub const MAX_CLOCK_SKEW_SECONDS: f64 = 300.0;
/// Longest checkpoint URI taken into status.
pub const MAX_URI_BYTES: usize = 2048;
/// Longest message taken into status and Events (longer ones are cut).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Most images per second a report may claim.
pub const MAX_IMAGES_PER_SECOND: f64 = 1e9;
/// The earliest checkpoint time believed (2000-01-01): a checkpoint may
/// predate the training (a re-created training resumes its predecessor's).
pub const EARLIEST_CHECKPOINT_UNIX: f64 = 946_684_800.0;

/// Why a report was dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ReportError {
    /// The report's field, as the JSON names it (`totalSteps`, `checkpoint.savedUnix`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// The clock a report is judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportClock {
    /// Unix time now, by the operator's clock.
    pub now: f64,
    /// When the training was created: no step of it can be older.
    pub created: f64,
}

fn refuse(field: &'static str, problem: impl Into<String>) -> Result<(), ReportError> {
    Err(ReportError {
        field,
        problem: problem.into(),
    })
}

fn at_most(field: &'static str, value: u64, max: u64, what: &str) -> Result<(), ReportError> {
    if value > max {
        return refuse(field, format!("{value} is more than {what} ({max})"));
    }
    Ok(())
}

/// A time the trainer read off its clock: finite, no later than `now` plus
/// the skew, and no earlier than `earliest`.
fn time(field: &'static str, t: f64, earliest: f64, clock: ReportClock) -> Result<(), ReportError> {
    if !t.is_finite() {
        return refuse(field, "is not a finite number");
    }
    if t > clock.now + MAX_CLOCK_SKEW_SECONDS {
        return refuse(
            field,
            format!(
                "{t} lies {:.0}s in the future (more than the {MAX_CLOCK_SKEW_SECONDS}s clock skew allowed)",
                t - clock.now
            ),
        );
    }
    if t < earliest {
        return refuse(
            field,
            format!("{t} is earlier than is possible ({earliest})"),
        );
    }
    Ok(())
}

fn percent(field: &'static str, v: f64) -> Result<(), ReportError> {
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        return refuse(field, format!("{v} is not a percentage between 0 and 100"));
    }
    Ok(())
}

/// Cut `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `report` if it is believable at `clock`, with its message shortened to
/// [`MAX_MESSAGE_BYTES`]; else which field is wrong.
pub fn validate(mut report: Progress, clock: ReportClock) -> Result<Progress, ReportError> {
    let p = &report;
    at_most(
        "totalSteps",
        p.total_steps,
        MAX_STEPS,
        "the largest step count taken",
    )?;
    at_most("step", p.step, MAX_STEPS, "the largest step count taken")?;
    if p.total_steps > 0 && p.step > p.total_steps {
        refuse(
            "step",
            format!("{} is more than totalSteps ({})", p.step, p.total_steps),
        )?;
    }
    at_most(
        "epochs",
        p.epochs,
        MAX_EPOCHS,
        "the largest epoch count taken",
    )?;
    at_most(
        "epoch",
        p.epoch,
        MAX_EPOCHS,
        "the largest epoch count taken",
    )?;
    if p.epochs > 0 && p.epoch > p.epochs {
        refuse(
            "epoch",
            format!("{} is more than epochs ({})", p.epoch, p.epochs),
        )?;
    }
    if p.world_size > MAX_WORLD_SIZE {
        refuse(
            "worldSize",
            format!("{} is more than {MAX_WORLD_SIZE} ranks", p.world_size),
        )?;
    }
    if p.world_size > 0 && p.rank >= p.world_size {
        refuse(
            "rank",
            format!("{} is not below worldSize ({})", p.rank, p.world_size),
        )?;
    }
    if !(p.images_per_second.is_finite()
        && (0.0..=MAX_IMAGES_PER_SECOND).contains(&p.images_per_second))
    {
        refuse(
            "imagesPerSecond",
            format!(
                "{} is not a rate between 0 and {MAX_IMAGES_PER_SECOND}",
                p.images_per_second
            ),
        )?;
    }
    let started = clock.created - MAX_CLOCK_SKEW_SECONDS;
    if let Some(t) = p.last_step_unix {
        time("lastStepUnix", t, started, clock)?;
    }
    if let Some(t) = p.training_since_unix {
        time("trainingSinceUnix", t, started, clock)?;
        if p.last_step_unix.is_some_and(|last| last < t) {
            refuse("lastStepUnix", "is earlier than trainingSinceUnix")?;
        }
    }
    if let Some(c) = &p.checkpoint {
        if c.uri.is_empty() || c.uri.len() > MAX_URI_BYTES {
            refuse(
                "checkpoint.uri",
                format!(
                    "must be 1 to {MAX_URI_BYTES} bytes long, not {}",
                    c.uri.len()
                ),
            )?;
        }
        if c.uri.chars().any(char::is_control) {
            refuse("checkpoint.uri", "holds control characters")?;
        }
        at_most("checkpoint.step", c.step, p.step, "the report's step")?;
        at_most(
            "checkpoint.epoch",
            c.epoch,
            MAX_EPOCHS,
            "the largest epoch count taken",
        )?;
        if p.epochs > 0 && c.epoch > p.epochs {
            refuse(
                "checkpoint.epoch",
                format!("{} is more than epochs ({})", c.epoch, p.epochs),
            )?;
        }
        if c.saved_at.len() > 64 {
            refuse("checkpoint.savedAt", "is longer than an RFC 3339 time")?;
        }
        let saved = c
            .saved_at
            .parse::<jiff::Timestamp>()
            .map_err(|e| ReportError {
                field: "checkpoint.savedAt",
                problem: format!("is not an RFC 3339 time: {e}"),
            })?;
        let saved = saved.as_millisecond() as f64 / 1e3;
        time("checkpoint.savedAt", saved, EARLIEST_CHECKPOINT_UNIX, clock)?;
        if let Some(t) = c.saved_unix {
            time("checkpoint.savedUnix", t, EARLIEST_CHECKPOINT_UNIX, clock)?;
        }
    }
    if let Some(e) = &p.eval {
        at_most(
            "eval.epoch",
            e.epoch,
            MAX_EPOCHS,
            "the largest epoch count taken",
        )?;
        if p.epochs > 0 && e.epoch > p.epochs {
            refuse(
                "eval.epoch",
                format!("{} is more than epochs ({})", e.epoch, p.epochs),
            )?;
        }
        percent("eval.top1", e.top1)?;
        for (field, v) in [
            ("eval.many", e.many),
            ("eval.medium", e.medium),
            ("eval.few", e.few),
        ] {
            if let Some(v) = v {
                percent(field, v)?;
            }
        }
    }
    if let Some(m) = report.message.as_mut() {
        *m = shorten(m, MAX_MESSAGE_BYTES);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ride_contract::{CheckpointProgress, EvalProgress};

    const NOW: f64 = 1_796_000_000.0;
    const CLOCK: ReportClock = ReportClock {
        now: NOW,
        created: NOW - 3600.0,
    };

    fn good() -> Progress {
        Progress {
            world_size: 4,
            epoch: 3,
            epochs: 10,
            step: 300,
            total_steps: 1000,
            last_step_unix: Some(NOW - 5.0),
            training_since_unix: Some(NOW - 600.0),
            images_per_second: 812.5,
            checkpoint: Some(CheckpointProgress {
                uri: "s3://b/run/ckpt_epoch_2".into(),
                epoch: 2,
                step: 290,
                saved_at: "2026-11-30T00:00:00Z".into(),
                saved_unix: Some(NOW - 60.0),
            }),
            eval: Some(EvalProgress {
                epoch: 2,
                top1: 41.5,
                few: Some(10.0),
                ..Default::default()
            }),
            message: Some("ok".into()),
            ..Default::default()
        }
    }

    fn field_of(p: Progress) -> &'static str {
        validate(p, CLOCK).expect_err("refused").field
    }

    #[test]
    fn a_real_report_passes_unchanged() {
        assert_eq!(validate(good(), CLOCK), Ok(good()));
        // Nothing known yet (starting up): also fine.
        assert!(validate(Progress::default(), CLOCK).is_ok());
    }

    #[test]
    fn the_report_that_crashed_the_operator_is_refused_naming_the_field() {
        let mut p = good();
        p.total_steps = u64::MAX;
        p.step = 2_305_843_009_213_693_952;
        assert_eq!(field_of(p), "totalSteps");
        let mut p = good();
        p.step = p.total_steps + 1;
        assert_eq!(field_of(p), "step");
        let mut p = good();
        p.epoch = 11;
        assert_eq!(field_of(p), "epoch");
    }

    #[test]
    fn times_must_be_finite_and_near_now() {
        for (t, field) in [
            (f64::NAN, "lastStepUnix"),
            (f64::INFINITY, "lastStepUnix"),
            (NOW + 3600.0, "lastStepUnix"),
            (NOW - 86_400.0, "lastStepUnix"),
        ] {
            let mut p = good();
            p.last_step_unix = Some(t);
            assert_eq!(field_of(p), field, "{t}");
        }
        // Within the skew it is believed.
        let mut p = good();
        p.last_step_unix = Some(NOW + 60.0);
        assert!(validate(p, CLOCK).is_ok());
        let mut p = good();
        p.checkpoint.as_mut().unwrap().saved_at = "yesterday".into();
        assert_eq!(field_of(p), "checkpoint.savedAt");
        let mut p = good();
        p.checkpoint.as_mut().unwrap().saved_unix = Some(-1e300);
        assert_eq!(field_of(p), "checkpoint.savedUnix");
        let mut p = good();
        p.checkpoint.as_mut().unwrap().step = 301;
        assert_eq!(field_of(p), "checkpoint.step");
    }

    #[test]
    fn accuracies_are_percentages_and_strings_are_bounded() {
        let mut p = good();
        p.eval.as_mut().unwrap().top1 = f64::NAN;
        assert_eq!(field_of(p), "eval.top1");
        let mut p = good();
        p.eval.as_mut().unwrap().few = Some(1e9);
        assert_eq!(field_of(p), "eval.few");
        let mut p = good();
        p.checkpoint.as_mut().unwrap().uri = "s3://b/".to_string() + &"x".repeat(5000);
        assert_eq!(field_of(p), "checkpoint.uri");
        let mut p = good();
        p.images_per_second = -1.0;
        assert_eq!(field_of(p), "imagesPerSecond");
        let mut p = good();
        p.message = Some("é".repeat(4000));
        let kept = validate(p, CLOCK).unwrap().message.unwrap();
        assert!(
            kept.len() <= MAX_MESSAGE_BYTES && kept.ends_with('…'),
            "{}",
            kept.len()
        );
    }
}
