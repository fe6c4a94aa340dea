use futures_util::StreamExt;

use super::*;

/// A hand-made layout: one config, two layers (one repeated), named "app".
struct Fixture {
    dir: tempfile::TempDir,
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let path = dir.join("blobs/sha256").join(digest.hex());
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write blob");
    digest
}

fn descriptor_json(media_type: &str, digest: &Digest, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

fn fixture_with(entries: impl Fn(&Digest, usize) -> String) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).expect("write");
    let config_bytes = br#"{"architecture":"arm64","os":"linux"}"#;
    let config = write_blob(d, config_bytes);
    let layer_a = b"layer a, a little longer than one chunk";
    let layer_b = b"layer b";
    let a = write_blob(d, layer_a);
    let b = write_blob(d, layer_b);
    let manifest_bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{},{},{}]}}"#,
        descriptor_json(
            "application/vnd.oci.image.config.v1+json",
            &config,
            config_bytes.len()
        ),
        descriptor_json("application/vnd.oci.image.layer.v1.tar", &a, layer_a.len()),
        descriptor_json("application/vnd.oci.image.layer.v1.tar", &b, layer_b.len()),
        descriptor_json("application/vnd.oci.image.layer.v1.tar", &a, layer_a.len()),
    );
    let manifest = write_blob(d, manifest_bytes.as_bytes());
    std::fs::write(
        d.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries(&manifest, manifest_bytes.len())
        ),
    )
    .expect("write index");
    Fixture {
        dir,
        manifest,
        config,
        layers: vec![a, b],
    }
}

fn named(name: &'static str) -> impl Fn(&Digest, usize) -> String {
    move |digest, size| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{size},"annotations":{{"{REF_NAME_ANNOTATION}":"{name}"}}}}"#
        )
    }
}

fn fixture() -> Fixture {
    fixture_with(named("app"))
}

fn open(f: &Fixture) -> OciLayout {
    OciLayout::open(f.dir.path()).expect("a valid layout")
}

#[track_caller]
fn assert_err_contains(result: Result<impl std::fmt::Debug, LayoutError>, expected: &[&str]) {
    match result {
        Ok(v) => panic!("expected an error containing {expected:?}, got {v:?}"),
        Err(e) => {
            let msg = e.to_string();
            for part in expected {
                assert!(msg.contains(part), "{msg:?} should contain {part:?}");
            }
        }
    }
}

#[test]
fn reads_the_named_image_and_its_blobs() {
    let f = fixture();
    let layout = open(&f);
    for name in [Some("app"), None] {
        let image = layout.image(name).expect("image");
        assert_eq!(image.manifest.digest, f.manifest);
        assert_eq!(image.manifest.media_type, OCI_MANIFEST);
        assert_eq!(Digest::sha256_of(&image.manifest_bytes), f.manifest);
        assert_eq!(image.manifest.size, image.manifest_bytes.len() as u64);
        assert_eq!(image.config.digest, f.config);
        assert_eq!(image.layers.len(), 3);
        let blobs: Vec<Digest> = image.blobs().into_iter().map(|b| b.digest).collect();
        assert_eq!(
            blobs,
            [f.config.clone(), f.layers[0].clone(), f.layers[1].clone()],
            "config first, each digest once"
        );
    }
}

#[test]
fn refuses_what_is_not_a_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_err_contains(
        OciLayout::open(dir.path()),
        &["not an OCI image layout", "oci-layout"],
    );
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .expect("write");
    assert_err_contains(
        OciLayout::open(dir.path()),
        &["unsupported imageLayoutVersion"],
    );
    std::fs::write(dir.path().join("oci-layout"), "nope").expect("write");
    assert_err_contains(OciLayout::open(dir.path()), &["invalid", "oci-layout"]);
}

#[test]
fn names_what_is_available_when_the_name_is_wrong() {
    let f = fixture();
    assert_err_contains(
        open(&f).image(Some("other")),
        &["no image named \"other\"", "app"],
    );
}

#[test]
fn several_images_need_a_name() {
    let f = fixture_with(|digest, size| {
        format!(
            "{},{}",
            named("one")(digest, size),
            named("two")(digest, size)
        )
    });
    let layout = open(&f);
    assert_err_contains(layout.image(None), &["holds 2 images", "one, two"]);
    assert_eq!(
        layout.image(Some("two")).expect("named").manifest.digest,
        f.manifest
    );
}

#[test]
fn an_empty_layout_says_so() {
    let f = fixture_with(|_, _| String::new());
    assert_err_contains(open(&f).image(None), &["holds no image"]);
}

#[test]
fn an_index_in_the_layout_is_refused() {
    let f = fixture_with(|digest, size| descriptor_json(OCI_INDEX, digest, size));
    assert_err_contains(open(&f).image(None), &["media type", OCI_INDEX]);
}

#[test]
fn a_tampered_manifest_is_refused_naming_it() {
    let f = fixture();
    let path = open(&f).blob_path(&f.manifest);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[10] ^= 0x01;
    std::fs::write(&path, bytes).expect("write");
    assert_err_contains(
        open(&f).image(None),
        &[
            "corrupt OCI layout",
            f.manifest.as_str(),
            "does not match its digest",
        ],
    );
}

async fn collect(chunks: BlobChunks) -> (Vec<Bytes>, Option<LayoutError>) {
    let mut got = Vec::new();
    let mut chunks = std::pin::pin!(chunks);
    while let Some(item) = chunks.next().await {
        match item {
            Ok(chunk) => got.push(chunk),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[tokio::test]
async fn streams_a_blob_in_chunks() {
    let f = fixture();
    let layout = open(&f);
    let image = layout.image(None).expect("image");
    let blob = &image.layers[0];
    let content = std::fs::read(layout.blob_path(&blob.digest)).expect("read");
    for chunk_size in [1, 4, 7, content.len(), content.len() + 10] {
        let (chunks, err) = collect(layout.blob_chunks(blob, chunk_size)).await;
        assert!(err.is_none(), "{err:?}");
        assert!(chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= chunk_size));
        assert_eq!(chunks.concat(), content, "chunk size {chunk_size}");
    }
}

#[tokio::test]
async fn a_corrupt_blob_fails_before_its_last_chunk() {
    let f = fixture();
    let layout = open(&f);
    let image = layout.image(None).expect("image");
    let blob = image.layers[0].clone();
    let path = layout.blob_path(&blob.digest);
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");

    let (chunks, err) = collect(layout.blob_chunks(&blob, 4)).await;
    let err = err.expect("corruption is detected");
    assert!(matches!(err, LayoutError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(blob.digest.as_str()), "{err}");
    assert!(!err.is_retryable());
    let released: usize = chunks.iter().map(Bytes::len).sum();
    assert!(
        released < bytes.len(),
        "the last chunk must be held back, {released} of {} bytes released",
        bytes.len()
    );
    // Reading it whole fails the same way.
    assert_err_contains(layout.read_blob(&blob), &[blob.digest.as_str()]);
}

#[tokio::test]
async fn short_long_and_missing_blobs_are_corrupt() {
    let f = fixture();
    let layout = open(&f);
    let image = layout.image(None).expect("image");
    let blob = image.layers[1].clone();
    let path = layout.blob_path(&blob.digest);
    let content = std::fs::read(&path).expect("read");

    std::fs::write(&path, &content[..content.len() - 1]).expect("write");
    let (_, err) = collect(layout.blob_chunks(&blob, 3)).await;
    let msg = err.expect("short blob").to_string();
    assert!(msg.contains("its descriptor says"), "{msg}");

    std::fs::write(&path, [&content[..], b"x"].concat()).expect("write");
    let (_, err) = collect(layout.blob_chunks(&blob, 3)).await;
    let msg = err.expect("long blob").to_string();
    assert!(msg.contains("longer than"), "{msg}");

    std::fs::remove_file(&path).expect("remove");
    let (chunks, err) = collect(layout.blob_chunks(&blob, 3)).await;
    assert!(chunks.is_empty());
    let msg = err.expect("missing blob").to_string();
    assert!(
        msg.contains("is missing") && msg.contains(blob.digest.as_str()),
        "{msg}"
    );
}
