//! The operator reads a training's progress from a real S3-compatible
//! server (Garage on loopback, started by `scripts/test.sh`), with the
//! credentials given as a Secret's keys, the way the controller passes them.

use object_store::ObjectStore;
use ride_operator::progress::{open_store, read_progress};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The server's variables (`$RIDE_S3_DIR/env`), or a panic saying how to get them.
fn s3_secret() -> BTreeMap<String, String> {
    let dir = std::env::var("RIDE_S3_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("RIDE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/ride")
                });
            cache.join("s3")
        });
    let file = dir.join("env");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. This test needs the S3 server: run `scripts/s3-server.sh start` \
             (or the whole suite with `scripts/test.sh`)",
            file.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn progress_is_read_from_s3_with_secret_credentials() {
    let mut secret = s3_secret();
    let bucket = secret.remove("RIDE_TEST_S3_BUCKET").expect("bucket");
    // What a user's Secret holds: no AWS_ALLOW_HTTP; the operator infers it.
    secret.remove("AWS_ALLOW_HTTP");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let uri = format!("s3://{bucket}/operator-tests/progress-{nanos}");
    assert!(read_progress(&uri, &secret).await.unwrap().is_none());

    let (store, prefix) = open_store(&uri, &secret).unwrap();
    let manifest =
        br#"{"dir":"ckpt_epoch_4","epoch":4,"step":120,"saved_at":"2026-11-29T04:00:00Z",
        "eval":{"top1":52.5,"many":64.0,"medium":49.0,"few":33.0}}"#;
    let key = prefix.child("swin_tiny").child("default").child("latest");
    store.put(&key, manifest.to_vec().into()).await.unwrap();
    let (c, e) = read_progress(&uri, &secret)
        .await
        .unwrap()
        .expect("a manifest");
    assert_eq!(c.uri, format!("{uri}/swin_tiny/default/ckpt_epoch_4"));
    assert_eq!((c.epoch, c.step), (4, 120));
    assert_eq!(e.unwrap().overall, 52.5);

    // Wrong credentials are an error that names the URI, not an empty status.
    secret.insert("AWS_SECRET_ACCESS_KEY".into(), "0".repeat(64));
    let err = read_progress(&uri, &secret).await.unwrap_err().to_string();
    assert!(err.contains(&uri), "{err}");
    assert!(
        !err.contains(&"0".repeat(64)),
        "the secret leaked into the error: {err}"
    );
}
