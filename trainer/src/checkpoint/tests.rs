use super::*;

fn meta(epoch: u64, iterations_done: Option<u64>, top1: Option<f64>) -> CheckpointMeta {
    CheckpointMeta {
        epoch,
        iterations_done,
        samples_done: 0,
        world_size: 1,
        accumulation: None,
        step: 3,
        micro_step: 3,
        next_lr: 0.1,
        max_accuracy: 0.0,
        scaler: None,
        eval: top1.map(|t| crate::eval::EvalReport {
            samples: 1,
            top1: t,
            top5: t,
            loss: 0.0,
            many: None,
            medium: None,
            few: None,
            per_expert_top1: vec![],
            expert_disagreement: vec![],
            per_class_top1: vec![],
            train_class_counts: vec![],
            routing: None,
        }),
        config: String::new(),
        saved_at: String::new(),
    }
}

fn weights(v: f32) -> NamedTensors {
    vec![("w".to_string(), Tensor::from_slice(&[v, 2.0]))]
}

fn open(dir: &tempfile::TempDir) -> CheckpointStore {
    CheckpointStore::open(dir.path().to_str().unwrap()).unwrap()
}

fn newest(s: &CheckpointStore) -> (Option<LoadedCheckpoint>, Vec<String>) {
    let mut skipped = Vec::new();
    let c = s
        .load_newest_valid(|d, e| skipped.push(format!("{d}: {e}")))
        .unwrap();
    (c, skipped)
}

#[test]
fn save_writes_checksummed_files_and_latest_last() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert!(newest(&s).0.is_none());
    let (uri, m) = s
        .save(&weights(1.0), &[], &meta(0, None, Some(50.0)))
        .unwrap();
    assert!(uri.ends_with("/ckpt_epoch_0"));
    assert_eq!(m.files.len(), 3);
    let bytes = std::fs::read(dir.path().join("ckpt_epoch_0/model.safetensors")).unwrap();
    assert_eq!(m.files["model.safetensors"].sha256, sha256_hex(&bytes));
    assert_eq!(s.latest_manifest().unwrap().unwrap(), m);
    assert_eq!(m.eval.as_ref().unwrap().top1, 50.0);
    let c = s.load("ckpt_epoch_0").unwrap();
    assert!(c.model[0].1.equal(&weights(1.0)[0].1));
}

#[test]
fn an_interrupted_save_never_becomes_current() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.save(&weights(1.0), &[], &meta(2, None, None)).unwrap();
    // A save of epoch 5 that died after its tensors: no manifest, `latest` untouched.
    std::fs::create_dir_all(dir.path().join("ckpt_epoch_5")).unwrap();
    std::fs::write(
        dir.path().join("ckpt_epoch_5/model.safetensors"),
        b"partial",
    )
    .unwrap();
    let (c, skipped) = newest(&s);
    assert_eq!(c.unwrap().dir, "ckpt_epoch_2");
    assert!(skipped.is_empty());
}

#[test]
fn a_corrupt_checkpoint_is_skipped_for_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.save(&weights(1.0), &[], &meta(1, None, None)).unwrap();
    s.save(&weights(9.0), &[], &meta(2, None, None)).unwrap();
    // Flip one byte of the newest weights (bit rot, a torn write).
    let p = dir.path().join("ckpt_epoch_2/model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let (c, skipped) = newest(&s);
    let c = c.unwrap();
    assert_eq!(c.dir, "ckpt_epoch_1");
    assert!(c.model[0].1.equal(&weights(1.0)[0].1));
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("SHA-256"), "{}", skipped[0]);
    // A missing file is caught the same way.
    std::fs::remove_file(dir.path().join("ckpt_epoch_1/optimizer.safetensors")).unwrap();
    let (c, skipped) = newest(&s);
    assert!(c.is_none());
    assert_eq!(skipped.len(), 2);
}

#[test]
fn mid_epoch_checkpoints_order_before_the_epoch_end() {
    assert!(
        parse_checkpoint_dir_name("ckpt_epoch_1_iter_5")
            < parse_checkpoint_dir_name("ckpt_epoch_1")
    );
    assert!(
        parse_checkpoint_dir_name("ckpt_epoch_1")
            < parse_checkpoint_dir_name("ckpt_epoch_2_iter_0")
    );
    assert!(
        parse_checkpoint_dir_name("ckpt_epoch_1_iter_5")
            < parse_checkpoint_dir_name("ckpt_epoch_1_iter_12")
    );
    assert_eq!(parse_checkpoint_dir_name("notes"), None);
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.save(&[], &[], &meta(1, None, None)).unwrap();
    s.save(&[], &[], &meta(2, Some(3), None)).unwrap();
    let (c, _) = newest(&s);
    assert_eq!(c.unwrap().dir, "ckpt_epoch_2_iter_3");
    assert_eq!(
        s.list().unwrap(),
        vec!["ckpt_epoch_2_iter_3", "ckpt_epoch_1"]
    );
}

#[test]
fn retention_keeps_the_newest_and_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let top1 = [10.0, 70.0, 30.0, 40.0, 50.0];
    for (e, t) in top1.iter().enumerate() {
        s.save(&weights(e as f32), &[], &meta(e as u64, None, Some(*t)))
            .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("ckpt_epoch_0_iter_7")).unwrap();
    std::fs::write(
        dir.path().join("ckpt_epoch_0_iter_7/model.safetensors"),
        b"x",
    )
    .unwrap();
    let deleted = s.apply_retention("ckpt_epoch_4", 2, true).unwrap();
    assert_eq!(
        deleted,
        vec!["ckpt_epoch_2", "ckpt_epoch_0", "ckpt_epoch_0_iter_7"]
    );
    assert_eq!(
        s.list().unwrap(),
        vec!["ckpt_epoch_4", "ckpt_epoch_3", "ckpt_epoch_1"]
    );
    assert!(!dir.path().join("ckpt_epoch_0").exists());
    assert!(s
        .apply_retention("ckpt_epoch_4", 0, true)
        .unwrap()
        .is_empty());
}

#[test]
fn frequent_mid_epoch_saves_do_not_push_out_the_epoch_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for e in 0..3 {
        s.save(&weights(e as f32), &[], &meta(e, None, None))
            .unwrap();
    }
    for i in 1..=4 {
        s.save(&weights(i as f32), &[], &meta(3, Some(i), None))
            .unwrap();
    }
    let deleted = s.apply_retention("ckpt_epoch_3_iter_4", 2, false).unwrap();
    assert_eq!(
        deleted,
        vec!["ckpt_epoch_3_iter_2", "ckpt_epoch_3_iter_1", "ckpt_epoch_0"]
    );
    assert_eq!(
        s.list().unwrap(),
        vec![
            "ckpt_epoch_3_iter_4",
            "ckpt_epoch_3_iter_3",
            "ckpt_epoch_2",
            "ckpt_epoch_1"
        ]
    );
}

#[test]
fn file_uris_and_the_background_writer() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file://{}/run", dir.path().display());
    let store = Arc::new(CheckpointStore::open(&uri).unwrap());
    store.probe(true).unwrap();
    let mut w = CheckpointWriter::new(
        store.clone(),
        writer::Retention {
            keep_last: 1,
            keep_best: false,
        },
        crate::metrics::Metrics::new(),
    );
    let live = Tensor::from_slice(&[1f32, 2.0]);
    w.submit(Snapshot::capture(
        &[("w".into(), live.shallow_clone())],
        &[],
        meta(0, None, None),
    ))
    .unwrap();
    // Training goes on mutating the live tensor; the snapshot must not see it.
    let _ = tch::no_grad(|| live.shallow_clone().fill_(7.0));
    w.submit(Snapshot::capture(
        &[("w".into(), live.shallow_clone())],
        &[],
        meta(1, None, None),
    ))
    .unwrap();
    let last = w.wait().unwrap().unwrap();
    assert_eq!(last, format!("{uri}/ckpt_epoch_1"));
    assert_eq!(store.list().unwrap(), vec!["ckpt_epoch_1"]);
    let c = store.load("ckpt_epoch_1").unwrap();
    assert!(c.model[0].1.equal(&Tensor::from_slice(&[7f32, 7.0])));
    assert!(dir.path().join("run/latest").exists());
}

#[test]
fn unsupported_schemes_are_named() {
    let e = CheckpointStore::open("ftp://host/x")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unsupported scheme 'ftp'"), "{e}");
}

#[test]
fn an_older_attempt_never_replaces_a_newer_attempts_latest_nor_writes_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    // The gang of attempt 0 runs on, cut off, after attempt 1 has started.
    let old = open(&dir).with_attempt(Some(0));
    let new = open(&dir).with_attempt(Some(1));
    old.claim_attempt().unwrap();
    old.save(&weights(1.0), &[], &meta(0, None, None)).unwrap();
    assert_eq!(old.latest_manifest().unwrap().unwrap().attempt, Some(0));
    // Attempt 1 starts: from its claim on, before its first save, attempt
    // 0 saves nothing.
    new.claim_attempt().unwrap();
    assert!(matches!(
        old.save(&weights(5.0), &[], &meta(1, None, None)),
        Err(CheckpointError::Fenced { mine: 0, newer: 1 })
    ));
    assert!(!dir.path().join("ckpt_epoch_1").exists());
    // A stale process of attempt 0 that starts only now is refused at once.
    assert!(matches!(
        open(&dir).with_attempt(Some(0)).claim_attempt(),
        Err(CheckpointError::Fenced { .. })
    ));
    // Attempt 1 resumed from attempt 0's checkpoint and saved.
    new.save(&weights(2.0), &[], &meta(1, None, None)).unwrap();
    // Attempt 0's next save: refused before any file is written.
    let e = old
        .save(&weights(9.0), &[], &meta(2, None, None))
        .unwrap_err();
    assert!(
        matches!(e, CheckpointError::Fenced { mine: 0, newer: 1 }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("attempt 1 of this run started after attempt 0"),
        "{e}"
    );
    let latest = new.latest_manifest().unwrap().unwrap();
    assert_eq!(
        (latest.dir.as_str(), latest.attempt),
        ("ckpt_epoch_1", Some(1))
    );
    assert!(!dir.path().join("ckpt_epoch_2").exists());
    // Resume takes the newer attempt's checkpoint.
    assert_eq!(newest(&new).0.unwrap().dir, "ckpt_epoch_1");
    // The newer attempt itself and later ones go on saving.
    new.save(&weights(3.0), &[], &meta(2, None, None)).unwrap();
    let later = open(&dir).with_attempt(Some(2));
    later
        .save(&weights(4.0), &[], &meta(3, None, None))
        .unwrap();
    assert_eq!(later.latest_manifest().unwrap().unwrap().attempt, Some(2));
}

#[test]
fn runs_without_attempts_and_checkpoints_from_before_fencing_are_not_fenced() {
    let dir = tempfile::tempdir().unwrap();
    // A local run (no launcher) over a checkpoint of attempt 3, and an
    // attempt over a `latest` that names none.
    open(&dir)
        .with_attempt(Some(3))
        .save(&weights(1.0), &[], &meta(0, None, None))
        .unwrap();
    open(&dir)
        .save(&weights(2.0), &[], &meta(1, None, None))
        .unwrap();
    assert_eq!(open(&dir).latest_manifest().unwrap().unwrap().attempt, None);
    open(&dir)
        .with_attempt(Some(0))
        .save(&weights(3.0), &[], &meta(2, None, None))
        .unwrap();
    let json = std::fs::read_to_string(dir.path().join("ckpt_epoch_1/manifest.json")).unwrap();
    assert!(
        !json.contains("attempt"),
        "no field where there is no attempt: {json}"
    );
}
