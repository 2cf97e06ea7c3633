//! Checkpoints on a real S3-compatible server (Garage on loopback, started by
//! `scripts/s3-server.sh`, which `scripts/test.sh` runs): train and resume
//! from `s3://`, survive a server restart mid-run, and reject bad credentials
//! before training.

mod common;

use common::{repo_root, text, tiny_config, Watched};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// The outage test stops the shared server; the tests take turns.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The server's environment (`$RIDE_S3_DIR/env`), or a panic saying how to get it.
fn s3_env() -> HashMap<String, String> {
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
            "{}: {e}. These tests need the S3 server: run `scripts/s3-server.sh start` \
             (or the whole suite with `scripts/test.sh`, which starts and stops it)",
            file.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tests/{name}-{}-{nanos}", std::process::id())
}

fn train_s3(
    env: &HashMap<String, String>,
    cfg: &std::path::Path,
    uri: &str,
    epochs: &str,
) -> Watched {
    let envs: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([
            ("OMP_NUM_THREADS", "2"),
            ("RIDE_STORAGE_RETRY_SECONDS", "60"),
        ])
        .collect();
    Watched::start(
        &[
            "train",
            "--cfg",
            cfg.to_str().unwrap(),
            "--device",
            "cpu",
            "--output",
            uri,
            "--metrics-addr",
            "off",
            "--no-progress",
            "--opts",
            "TRAIN.EPOCHS",
            epochs,
        ],
        &envs,
    )
}

#[test]
fn trains_and_resumes_from_s3() {
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let env = s3_env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let uri = format!(
        "s3://{}/{}",
        env["RIDE_TEST_S3_BUCKET"],
        unique_prefix("resume")
    );
    let (status, t) = train_s3(&env, &cfg, &uri, "1").finish();
    assert!(status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "checkpoint saved: {uri}/tiny/default/ckpt_epoch_0"
        )),
        "{t}"
    );
    let (status, t) = train_s3(&env, &cfg, &uri, "2").finish();
    assert!(status.success(), "{t}");
    assert!(
        t.contains(&format!("resumed from {uri}/tiny/default/ckpt_epoch_0")),
        "{t}"
    );
    assert!(t.contains("epochs run   1"), "{t}");
}

#[test]
fn a_server_restart_mid_run_costs_retries_not_the_run() {
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let env = s3_env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    // Slow enough per epoch that the outage overlaps training and saves.
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 300");
    std::fs::write(&cfg, text_cfg).unwrap();
    let uri = format!(
        "s3://{}/{}",
        env["RIDE_TEST_S3_BUCKET"],
        unique_prefix("outage")
    );
    let run = train_s3(&env, &cfg, &uri, "12");
    // Once training has started (storage probed), take the server away. How
    // far training got by then depends on the machine, so the test does not
    // assume it: a save is either in flight at the crash or handed to the
    // background writer at the next epoch end, while the server is down.
    run.wait_for("training tiny", 120);
    let script = repo_root().join("scripts/s3-server.sh");
    // Whatever happens below, the server comes back for the other tests.
    struct Restart(PathBuf);
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ = Command::new("bash").arg(&self.0).arg("start").output();
        }
    }
    let _restart = Restart(script.clone());
    let stop = Command::new("bash")
        .arg(&script)
        .arg("crash")
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", text(&stop));
    let epochs_done = |t: &str| t.lines().filter(|l| l.contains("/12 loss")).count();
    let before = epochs_done(&run.text());
    assert!(
        before < 12,
        "training finished before the server was down; make it longer:\n{}",
        run.text()
    );
    // Wait for the next epoch to end (its save then meets the dead server),
    // but not forever: training blocks at an epoch end while the previous
    // save is still in flight, and that save is then the one meeting the
    // outage.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while epochs_done(&run.text()) == before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let start = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .unwrap();
    assert!(start.status.success(), "{}", text(&start));
    let (status, t) = run.finish();
    assert!(status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "checkpoint saved: {uri}/tiny/default/ckpt_epoch_11"
        )),
        "{t}"
    );
    // The save that met the outage was retried until the server came back.
    let longest = t
        .lines()
        .filter_map(|l| {
            l.split(" MB in ")
                .nth(1)?
                .strip_suffix("s)")?
                .parse::<f64>()
                .ok()
        })
        .fold(0.0, f64::max);
    assert!(
        longest >= 2.0,
        "no save spanned the outage (longest {longest}s):\n{t}"
    );
    assert!(!t.contains("checkpoint save failed"), "{t}");
}

#[test]
fn wrong_credentials_fail_before_training_with_a_clear_error() {
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = s3_env();
    env.insert("AWS_SECRET_ACCESS_KEY".into(), "0".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let uri = format!(
        "s3://{}/{}",
        env["RIDE_TEST_S3_BUCKET"],
        unique_prefix("badkey")
    );
    let started = std::time::Instant::now();
    let (status, t) = train_s3(&env, &cfg, &uri, "1").finish();
    assert_eq!(status.code(), Some(1), "{t}");
    assert!(t.contains("refused access"), "{t}");
    assert!(
        t.contains("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
        "{t}"
    );
    assert!(!t.contains("training tiny"), "training started:\n{t}");
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
}

/// The last `ckpt_epoch_N` a run's log says it saved under `uri`.
fn last_saved_epoch(log: &str, uri: &str) -> Option<u64> {
    let needle = format!("checkpoint saved: {uri}/tiny/default/ckpt_epoch_");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
}

#[test]
fn a_replaced_attempt_still_running_never_makes_its_checkpoint_latest() {
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = s3_env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 150");
    std::fs::write(&cfg, text_cfg).unwrap();
    let uri = format!(
        "s3://{}/{}",
        env["RIDE_TEST_S3_BUCKET"],
        unique_prefix("fence")
    );
    // Attempt 0's rank, cut off behind a partition, trains and saves on.
    env.insert("RIDE_RESTART_ATTEMPT".into(), "0".into());
    let mut old = train_s3(&env, &cfg, &uri, "200");
    old.wait_for(
        &format!("checkpoint saved: {uri}/tiny/default/ckpt_epoch_0"),
        300,
    );
    // Its replacement, attempt 1, starts from the newest checkpoint and
    // trains a few more epochs while attempt 0 goes on.
    env.insert("RIDE_RESTART_ATTEMPT".into(), "1".into());
    let resumed_at = last_saved_epoch(&old.text(), &uri).unwrap();
    let epochs = (resumed_at + 4).to_string();
    let (status, new_log) = train_s3(&env, &cfg, &uri, &epochs).finish();
    assert!(status.success(), "{new_log}");
    let new_last = last_saved_epoch(&new_log, &uri).expect("attempt 1 saved");
    // Attempt 0 has tried to save since (it is never told it was
    // replaced): refused, nothing written.
    let refused = "checkpoint not saved: attempt 1 of this run started after attempt 0";
    let seen_before = old.text().matches(refused).count();
    let want = seen_before + 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while old.text().matches(refused).count() < want {
        assert!(
            std::time::Instant::now() < deadline,
            "attempt 0 never tried to save again:\n{}",
            old.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = old.child.kill();
    let (_, old_log) = old.finish();
    let old_last = last_saved_epoch(&old_log, &uri).unwrap();
    assert!(
        new_log.contains(&format!("resumed from {uri}/tiny/default/ckpt_epoch_")),
        "{new_log}"
    );
    // A third attempt resumes from attempt 1's last checkpoint, whatever
    // attempt 0 did in between.
    env.insert("RIDE_RESTART_ATTEMPT".into(), "2".into());
    let (status, next_log) = train_s3(&env, &cfg, &uri, &(new_last + 2).to_string()).finish();
    assert!(status.success(), "{next_log}");
    assert!(
        next_log.contains(&format!(
            "resumed from {uri}/tiny/default/ckpt_epoch_{new_last}"
        )),
        "attempt 2 must resume from attempt 1's ckpt_epoch_{new_last} (attempt 0 last saved ckpt_epoch_{old_last}):\n{next_log}"
    );
    println!(
        "attempt 0 saved up to ckpt_epoch_{old_last} and was refused {} times after attempt 1 started; attempt 1 saved up to ckpt_epoch_{new_last}, which attempt 2 resumed from",
        old_log.matches(refused).count()
    );
}
