//! Status times as RFC 3339 strings, as Kubernetes users expect them
//! (`kubectl get -o yaml`, `jq`, dashboards), while the decisions work on
//! Unix seconds. Objects written by operators before 0.2 hold integers;
//! those are still read.

use serde::{Deserialize, Deserializer, Serializer};

/// The RFC 3339 form of a Unix time.
pub fn format(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Serialise `Option<i64>` Unix seconds as an RFC 3339 string.
pub fn serialize<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format(*t)),
        None => s.serialize_none(),
    }
}

/// Read an RFC 3339 string, or the Unix seconds of older objects.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Seconds(i64),
        Text(String),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::Seconds(t)) => Ok(Some(t)),
        Some(Either::Text(s)) => s
            .parse::<jiff::Timestamp>()
            .map(|t| Some(t.as_second()))
            .map_err(|e| serde::de::Error::custom(format!("'{s}' is not an RFC 3339 time: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(default, with = "super", skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
    }

    #[test]
    fn times_are_rfc3339_and_old_integers_still_read() {
        let json = serde_json::to_string(&T {
            at: Some(1_767_225_600),
        })
        .unwrap();
        assert_eq!(json, r#"{"at":"2026-01-01T00:00:00Z"}"#);
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(back.at, Some(1_767_225_600));
        let old: T = serde_json::from_str(r#"{"at":1767225600}"#).unwrap();
        assert_eq!(old.at, Some(1_767_225_600));
        let none: T = serde_json::from_str("{}").unwrap();
        assert_eq!(none.at, None);
        assert!(serde_json::from_str::<T>(r#"{"at":"yesterday"}"#).is_err());
    }
}
