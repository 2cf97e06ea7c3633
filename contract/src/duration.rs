//! Durations as users write them in flags, environment and specs: `90s`,
//! `30m`, `1h30m`, `500ms`, or `0` for off (Go's `time.ParseDuration`
//! units, without fractions or signs).

use std::time::Duration;

/// The environment variable the trainer reads `--checkpoint-every` from.
pub const ENV_CHECKPOINT_EVERY: &str = "RIDE_CHECKPOINT_EVERY";

/// The default time-based checkpoint interval (launchers and the operator).
pub const DEFAULT_CHECKPOINT_EVERY: &str = "30m";

/// `s` as a duration; `Ok(None)` for `0` (off). The error says what a
/// valid one looks like.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(None);
    }
    let bad =
        || format!("{s:?} is not a duration: write e.g. 90s, 30m, 1h30m or 500ms (0 turns it off)");
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len): (u64, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        let ms = n.checked_mul(unit).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
    }
    Ok((!total.is_zero()).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_users_write_them() {
        assert_eq!(parse_duration("0"), Ok(None));
        assert_eq!(parse_duration("0s"), Ok(None));
        assert_eq!(parse_duration("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(parse_duration("1h30m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(
            parse_duration("500ms"),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            parse_duration(DEFAULT_CHECKPOINT_EVERY),
            Ok(Some(Duration::from_secs(1800)))
        );
        for bad in [
            "",
            "30",
            "m",
            "1.5h",
            "-1m",
            "30 m",
            "1d",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("90s, 30m"), "{bad}: {e}");
        }
    }
}
