//! The checkpoint suite on every object store a cluster has, each a real
//! server on loopback started by `scripts/test.sh`: S3 (Garage,
//! `scripts/s3-server.sh`), GCS (fake-gcs-server with the XML API writes
//! object_store needs added in front, `scripts/gcs-server.sh`)
//! and Azure Blob Storage (Azurite, `scripts/az-server.sh`). On each: train
//! and resume, `latest` written last (an interrupted save is never chosen),
//! a corrupt newest checkpoint skipped, retention, a server crash mid-run
//! costing retries and not the run, a replaced attempt fenced off, and bad
//! credentials refused before training (where the server checks any).

mod common;

use common::{repo_root, text, tiny_config, Watched};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use object_store::{path::Path as StorePath, ObjectStore, PutPayload};

/// One object store server the suite runs on.
struct Server {
    /// Name in messages.
    name: &'static str,
    /// URI scheme of its checkpoints.
    scheme: &'static str,
    /// The script that starts, stops and crashes it.
    script: &'static str,
    /// Its service directory's variable (the env file lies there) and the
    /// directory under the cache when unset.
    dir_var: &'static str,
    default_dir: &'static str,
    /// The env file's variable naming the bucket or container.
    bucket_var: &'static str,
    /// A credential made wrong, and the hint the refusal must name; `None`
    /// where the server checks no credentials (its suite has no such test).
    wrong_credentials: Option<(&'static str, &'static str, &'static str)>,
    /// The tests that stop this server take turns with the others on it.
    turn: &'static std::sync::Mutex<()>,
}

static S3_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
static GCS_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
static AZ_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

const S3: Server = Server {
    name: "S3 (Garage)",
    scheme: "s3",
    script: "scripts/s3-server.sh",
    dir_var: "RIDE_S3_DIR",
    default_dir: "s3",
    bucket_var: "RIDE_TEST_S3_BUCKET",
    wrong_credentials: Some((
        "AWS_SECRET_ACCESS_KEY",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    )),
    turn: &S3_TURN,
};

/// fake-gcs-server accepts any token (or none).
const GCS: Server = Server {
    name: "GCS (fake-gcs-server)",
    scheme: "gs",
    script: "scripts/gcs-server.sh",
    dir_var: "RIDE_GCS_DIR",
    default_dir: "gcs",
    bucket_var: "RIDE_TEST_GCS_BUCKET",
    wrong_credentials: None,
    turn: &GCS_TURN,
};

const AZ: Server = Server {
    name: "Azure Blob Storage (Azurite)",
    scheme: "az",
    script: "scripts/az-server.sh",
    dir_var: "RIDE_AZ_DIR",
    default_dir: "az",
    bucket_var: "RIDE_TEST_AZ_CONTAINER",
    // A well-formed key (base64 of 64 bytes) that is not the account's.
    wrong_credentials: Some((
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
    )),
    turn: &AZ_TURN,
};

impl Server {
    /// The server's environment (`$DIR/env`), or a panic saying how to get it.
    fn env(&self) -> HashMap<String, String> {
        let dir = std::env::var(self.dir_var)
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let cache = std::env::var("RIDE_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| {
                        PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/ride")
                    });
                cache.join(self.default_dir)
            });
        let file = dir.join("env");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}. These tests need the {} server: run `{} start` \
                 (or the whole suite with `scripts/test.sh`, which starts and stops it)",
                file.display(),
                self.name,
                self.script
            )
        });
        text.lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    }

    /// A fresh location for one test.
    fn uri(&self, env: &HashMap<String, String>, test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "{}://{}/tests/{test}-{}-{nanos}",
            self.scheme,
            env[self.bucket_var],
            std::process::id()
        )
    }

    fn run_script(&self, verb: &str) {
        let out = Command::new("bash")
            .arg(repo_root().join(self.script))
            .arg(verb)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {verb}: {}",
            self.script,
            text(&out)
        );
    }

    /// The store itself, configured from the env file alone (this process's
    /// environment stays as it is: tests run side by side in threads).
    fn store(&self, env: &HashMap<String, String>) -> Arc<dyn ObjectStore> {
        let bucket = env[self.bucket_var].clone();
        let pairs = env.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        match self.scheme {
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
                for (k, v) in pairs.filter(|(k, _)| k.starts_with("aws_")) {
                    if let Ok(key) = k.parse() {
                        b = b.with_config(key, v);
                    }
                }
                Arc::new(b.with_allow_http(true).build().unwrap())
            }
            "gs" => {
                let b = object_store::gcp::GoogleCloudStorageBuilder::new()
                    .with_bucket_name(bucket)
                    .with_service_account_key(&env["GOOGLE_SERVICE_ACCOUNT_KEY"])
                    .with_config(
                        object_store::gcp::GoogleConfigKey::Client(
                            object_store::ClientConfigKey::AllowHttp,
                        ),
                        "true",
                    );
                Arc::new(b.build().unwrap())
            }
            _ => {
                let mut b =
                    object_store::azure::MicrosoftAzureBuilder::new().with_container_name(bucket);
                for (k, v) in pairs.filter(|(k, _)| k.starts_with("azure_")) {
                    if let Ok(key) = k.parse() {
                        b = b.with_config(key, v);
                    }
                }
                Arc::new(b.with_allow_http(true).build().unwrap())
            }
        }
    }
}

/// The key of `uri`'s object `rest` inside its bucket.
fn key_of(uri: &str, rest: &str) -> StorePath {
    let path = url::Url::parse(uri).unwrap().path().to_string();
    StorePath::from(format!("{}/{rest}", path.trim_matches('/')))
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The checkpoint directories under a run, with the files each holds.
fn listing(store: &dyn ObjectStore, run: &StorePath) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = block(store.list(Some(run)).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| {
            m.location
                .as_ref()
                .trim_start_matches(run.as_ref())
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn train(
    env: &HashMap<String, String>,
    cfg: &std::path::Path,
    uri: &str,
    args: &[&str],
) -> Watched {
    let envs: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([
            ("OMP_NUM_THREADS", "2"),
            ("RIDE_STORAGE_RETRY_SECONDS", "60"),
        ])
        .collect();
    let mut all = vec![
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
    ];
    all.extend_from_slice(args);
    Watched::start(&all, &envs)
}

fn epochs(n: &str) -> [&str; 2] {
    ["TRAIN.EPOCHS", n]
}

fn trains_and_resumes(server: &Server) {
    let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
    let env = server.env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let uri = server.uri(&env, "resume");
    let (status, t) = train(&env, &cfg, &uri, &epochs("1")).finish();
    assert!(status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "checkpoint saved: {uri}/tiny/default/ckpt_epoch_0"
        )),
        "{t}"
    );
    let (status, t) = train(&env, &cfg, &uri, &epochs("2")).finish();
    assert!(status.success(), "{t}");
    assert!(
        t.contains(&format!("resumed from {uri}/tiny/default/ckpt_epoch_0")),
        "{t}"
    );
    assert!(t.contains("epochs run   1"), "{t}");
}

/// Retention keeps the newest checkpoints; an interrupted save (files, no
/// manifest, `latest` untouched) is never resumed from; a corrupt newest
/// checkpoint is skipped for the one before it.
fn retention_interrupted_and_corrupt(server: &Server) {
    let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
    let env = server.env();
    let store = server.store(&env);
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let uri = server.uri(&env, "retention");
    let keep = [
        "TRAIN.EPOCHS",
        "4",
        "CHECKPOINT.KEEP_LAST",
        "2",
        "CHECKPOINT.KEEP_BEST",
        "False",
    ];
    let (status, t) = train(&env, &cfg, &uri, &keep).finish();
    assert!(status.success(), "{t}");
    let run = key_of(&uri, "tiny/default");
    let files = listing(store.as_ref(), &run);
    let dirs: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.split_once('/').map(|(d, _)| d))
        .collect();
    assert_eq!(
        dirs.into_iter().collect::<Vec<_>>(),
        ["ckpt_epoch_2", "ckpt_epoch_3"],
        "{files:?}\n{t}"
    );
    // `latest` names the newest.
    let latest = block(async {
        store
            .get(&key_of(&uri, "tiny/default/latest"))
            .await?
            .bytes()
            .await
    })
    .unwrap();
    let latest: serde_json::Value = serde_json::from_slice(&latest).unwrap();
    assert_eq!(latest["dir"], "ckpt_epoch_3");
    // A save interrupted after its tensors: a newer directory without a
    // manifest, `latest` not moved.
    let put = |rest: &str, bytes: &'static [u8]| {
        block(store.put(
            &key_of(&uri, &format!("tiny/default/{rest}")),
            PutPayload::from_static(bytes),
        ))
        .unwrap();
    };
    put("ckpt_epoch_7/model.safetensors", b"half a file");
    // The newest complete checkpoint corrupted after its manifest was written.
    put(
        "ckpt_epoch_3/model.safetensors",
        b"not the bytes the manifest hashed",
    );
    let (status, t) = train(&env, &cfg, &uri, &["TRAIN.EPOCHS", "5"]).finish();
    assert!(status.success(), "{t}");
    assert!(t.contains("skipping checkpoint ckpt_epoch_3"), "{t}");
    assert!(
        t.contains(&format!("resumed from {uri}/tiny/default/ckpt_epoch_2")),
        "{t}"
    );
    assert!(
        !t.contains("ckpt_epoch_7 is corrupt"),
        "the interrupted save was tried:\n{t}"
    );
    assert!(
        t.contains(&format!(
            "checkpoint saved: {uri}/tiny/default/ckpt_epoch_4"
        )),
        "{t}"
    );
}

fn a_server_crash_mid_run_costs_retries_not_the_run(server: &Server) {
    let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
    let env = server.env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    // Slow enough per epoch that the outage overlaps training and saves.
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 300");
    std::fs::write(&cfg, text_cfg).unwrap();
    let uri = server.uri(&env, "outage");
    let run = train(&env, &cfg, &uri, &epochs("12"));
    // Once training has started (storage probed), take the server away. How
    // far training got by then depends on the machine, so the test does not
    // assume it: a save is either in flight at the crash or handed to the
    // background writer at the next epoch end, while the server is down.
    run.wait_for("training tiny", 120);
    // Whatever happens below, the server comes back for the other tests.
    struct Restart(&'static str);
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(repo_root().join(self.0))
                .arg("start")
                .output();
        }
    }
    let _restart = Restart(server.script);
    server.run_script("crash");
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
    server.run_script("start");
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

fn wrong_credentials_fail_before_training_with_a_clear_error(server: &Server) {
    let (var, wrong, hint) = server
        .wrong_credentials
        .expect("only servers that check credentials run this test");
    let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = server.env();
    env.insert(var.into(), wrong.into());
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let uri = server.uri(&env, "badkey");
    let (status, t) = train(&env, &cfg, &uri, &epochs("1")).finish();
    assert_eq!(status.code(), Some(1), "{t}");
    assert!(t.contains("refused access"), "{t}");
    assert!(t.contains(hint), "{t}");
    assert!(!t.contains("training tiny"), "training started:\n{t}");
    // A refusal must not be retried until the retry deadline: object_store
    // names the retries it made in the error ("after N retries, max_retries:
    // ...") and leaves that out when there were none.
    assert!(
        !t.contains("retries, max_retries"),
        "the refusal was retried:\n{t}"
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

fn a_replaced_attempt_still_running_never_makes_its_checkpoint_latest(server: &Server) {
    let _turn = server.turn.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = server.env();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MAX_PER_CLASS: 40", "MAX_PER_CLASS: 150");
    std::fs::write(&cfg, text_cfg).unwrap();
    let uri = server.uri(&env, "fence");
    // Attempt 0's rank, cut off behind a partition, trains and saves on.
    env.insert("RIDE_RESTART_ATTEMPT".into(), "0".into());
    let mut old = train(&env, &cfg, &uri, &epochs("200"));
    old.wait_for(
        &format!("checkpoint saved: {uri}/tiny/default/ckpt_epoch_0"),
        300,
    );
    // Its replacement, attempt 1, starts from the newest checkpoint and
    // trains a few more epochs while attempt 0 goes on.
    env.insert("RIDE_RESTART_ATTEMPT".into(), "1".into());
    let resumed_at = last_saved_epoch(&old.text(), &uri).unwrap();
    let until = (resumed_at + 4).to_string();
    let (status, new_log) = train(&env, &cfg, &uri, &epochs(&until)).finish();
    assert!(status.success(), "{new_log}");
    let new_last = last_saved_epoch(&new_log, &uri).expect("attempt 1 saved");
    // Attempt 0 has tried to save since (it is never told it was
    // replaced): refused, nothing written.
    let refused = "checkpoint not saved: attempt 1 of this run started after attempt 0";
    let want = old.text().matches(refused).count() + 1;
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
    let until = (new_last + 2).to_string();
    let (status, next_log) = train(&env, &cfg, &uri, &epochs(&until)).finish();
    assert!(status.success(), "{next_log}");
    assert!(
        next_log.contains(&format!("resumed from {uri}/tiny/default/ckpt_epoch_{new_last}")),
        "attempt 2 must resume from attempt 1's ckpt_epoch_{new_last} (attempt 0 last saved ckpt_epoch_{old_last}):\n{next_log}"
    );
    println!(
        "{}: attempt 0 saved up to ckpt_epoch_{old_last} and was refused {} times after attempt 1 started; attempt 1 saved up to ckpt_epoch_{new_last}, which attempt 2 resumed from",
        server.name,
        old_log.matches(refused).count()
    );
}

/// What fences `latest` on this server: a write conditional on the version
/// read succeeds, and a second one on the same (now stale) version is
/// refused, so two writers never silently overwrite each other.
fn a_stale_conditional_write_is_refused(server: &Server) {
    use object_store::{PutMode, PutOptions, UpdateVersion};
    let env = server.env();
    let store = server.store(&env);
    let uri = server.uri(&env, "conditional");
    let key = key_of(&uri, "latest");
    block(async {
        let first = store
            .put(&key, PutPayload::from_static(b"one"))
            .await
            .unwrap();
        let read = store.head(&key).await.unwrap();
        let version = UpdateVersion {
            e_tag: read.e_tag.clone(),
            version: read.version.clone(),
        };
        assert!(
            first.e_tag.is_some() || first.version.is_some(),
            "{}: no version to condition on",
            server.name
        );
        let update = |bytes: &'static [u8]| {
            store.put_opts(
                &key,
                PutPayload::from_static(bytes),
                PutOptions::from(PutMode::Update(version.clone())),
            )
        };
        update(b"two").await.unwrap();
        match update(b"three").await {
            Err(object_store::Error::Precondition { .. }) => {}
            other => panic!("{}: a write on a stale version gave {other:?}", server.name),
        }
        let now = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&now[..], b"two");
    });
}

/// The suite, once per server, plus the tests named after it (those only
/// some servers can pass: Garage 2.5.0 takes a write whose `If-Match` names
/// a stale ETag, fake-gcs-server checks no credentials).
macro_rules! suite {
    ($module:ident, $server:expr $(, $extra:ident)*) => {
        mod $module {
            #[test]
            fn trains_and_resumes() {
                super::trains_and_resumes(&$server)
            }
            #[test]
            fn retention_interrupted_and_corrupt() {
                super::retention_interrupted_and_corrupt(&$server)
            }
            #[test]
            fn a_server_crash_mid_run_costs_retries_not_the_run() {
                super::a_server_crash_mid_run_costs_retries_not_the_run(&$server)
            }
            #[test]
            fn a_replaced_attempt_still_running_never_makes_its_checkpoint_latest() {
                super::a_replaced_attempt_still_running_never_makes_its_checkpoint_latest(&$server)
            }
            $(
            #[test]
            fn $extra() {
                super::$extra(&$server)
            }
            )*
        }
    };
}

suite!(
    s3,
    super::S3,
    wrong_credentials_fail_before_training_with_a_clear_error
);
suite!(gcs, super::GCS, a_stale_conditional_write_is_refused);
suite!(
    azure,
    super::AZ,
    wrong_credentials_fail_before_training_with_a_clear_error,
    a_stale_conditional_write_is_refused
);
