//! Where a run's checkpoints go (`ride-trainer train --output`, a
//! RideTraining's `spec.checkpoint.uri`): a local directory or an object
//! store URI, parsed once into a [`CheckpointUri`]. This is the one list of
//! accepted schemes and the one place that says which environment variables
//! carry each scheme's credentials.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The kind of storage a checkpoint location names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// A directory on this machine (or a volume mounted on it): a plain path
    /// such as `output/run`, or `file:///absolute/path`.
    File,
    /// Amazon S3 or an S3-compatible server: `s3://bucket/prefix` (also
    /// written `s3a://`).
    S3,
    /// Google Cloud Storage: `gs://bucket/prefix`.
    Gcs,
    /// Azure Blob Storage or Data Lake: `az://container/prefix` (also
    /// `azure://`, and `abfs://` or `abfss://` as
    /// `container@account.dfs.core.windows.net/prefix`).
    Azure,
}

/// An environment variable through which a scheme's credentials or settings
/// reach the trainer (on Kubernetes, a key of the training's credentials
/// Secret of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialVar {
    /// The variable's name, also the Secret key.
    pub name: &'static str,
    /// Whether static-key authentication needs it; the others (a session
    /// token, a region, an endpoint) are set only where they apply.
    pub required: bool,
}

const fn var(name: &'static str, required: bool) -> CredentialVar {
    CredentialVar { name, required }
}

impl Scheme {
    /// Every scheme, in the order error messages and the CRD list them.
    pub const ALL: [Scheme; 4] = [Scheme::File, Scheme::S3, Scheme::Gcs, Scheme::Azure];

    /// The URI schemes (before `://`) that name this kind of storage, the
    /// usual one first.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Scheme::File => &["file"],
            Scheme::S3 => &["s3", "s3a"],
            Scheme::Gcs => &["gs"],
            Scheme::Azure => &["az", "azure", "abfs", "abfss"],
        }
    }

    /// The scheme a URI's scheme name (`s3a`, `gs`, ...) stands for.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.names().contains(&name))
    }

    /// Every accepted URI scheme name, as [`Scheme::ALL`] orders them.
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        Scheme::ALL
            .into_iter()
            .flat_map(|s| s.names().iter().copied())
    }

    /// The accepted URI prefixes for messages: `file://, s3://, ... or abfss://`.
    pub fn accepted_prefixes() -> String {
        let prefixes: Vec<String> = Scheme::all_names().map(|n| format!("{n}://")).collect();
        match prefixes.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// Whether the storage is a directory on the machine itself.
    pub fn is_local(self) -> bool {
        self == Scheme::File
    }

    /// The environment variables a launcher passes on for this scheme's
    /// credentials (the operator as `secretKeyRef`s to the training's
    /// credentials Secret, a Slurm job from the submitting environment).
    pub fn credential_vars(self) -> &'static [CredentialVar] {
        const S3: [CredentialVar; 6] = [
            var("AWS_ACCESS_KEY_ID", true),
            var("AWS_SECRET_ACCESS_KEY", true),
            var("AWS_SESSION_TOKEN", false),
            var("AWS_REGION", false),
            var("AWS_ENDPOINT_URL", false),
            // `etag`: `latest` is written with If-Match (AWS S3, MinIO);
            // unset for servers without conditional writes.
            var("AWS_CONDITIONAL_PUT", false),
        ];
        const GCS: [CredentialVar; 1] = [var("GOOGLE_SERVICE_ACCOUNT_KEY", true)];
        const AZURE: [CredentialVar; 3] = [
            var("AZURE_STORAGE_ACCOUNT_NAME", true),
            var("AZURE_STORAGE_ACCOUNT_KEY", true),
            var("AZURE_STORAGE_ENDPOINT", false),
        ];
        match self {
            Scheme::File => &[],
            Scheme::S3 => &S3,
            Scheme::Gcs => &GCS,
            Scheme::Azure => &AZURE,
        }
    }

    /// What to check when the storage refuses access, for error messages.
    pub fn credential_hint(self) -> &'static str {
        match self {
            Scheme::S3 => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL, AWS_REGION for S3-compatible servers)",
            Scheme::Gcs => "GOOGLE_SERVICE_ACCOUNT_KEY (the key the operator passes on) / GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS",
            Scheme::Azure => "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY (and AZURE_STORAGE_ENDPOINT for a private endpoint or an emulator)",
            Scheme::File => "the file permissions of the output directory",
        }
    }

    /// What the part after `://` names: a bucket or a container.
    fn holder(self) -> &'static str {
        match self {
            Scheme::Azure => "container",
            _ => "bucket",
        }
    }
}

impl fmt::Display for Scheme {
    /// The usual scheme name (`file`, `s3`, `gs`, `az`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.names()[0])
    }
}

/// Why a checkpoint location was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointUriError {
    /// Empty or only white space.
    Empty,
    /// It has a `://` but does not parse as a URI.
    Malformed {
        /// The text as given.
        uri: String,
        /// What the URI parser objected to.
        reason: String,
    },
    /// A URI of a scheme no launcher can open.
    UnknownScheme {
        /// The text as given.
        uri: String,
        /// The scheme name before `://`.
        scheme: String,
    },
    /// A remote URI without a bucket or container (`s3://`, `gs:///x`).
    NoBucket {
        /// The text as given.
        uri: String,
        /// The storage it names.
        scheme: Scheme,
    },
    /// A `file://` URI that is not an absolute local path (`file://host/x`).
    NotALocalPath {
        /// The text as given.
        uri: String,
    },
}

impl fmt::Display for CheckpointUriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accepted = Scheme::accepted_prefixes();
        match self {
            CheckpointUriError::Empty => write!(
                f,
                "the checkpoint location is empty: use a local path or a {accepted} URI"
            ),
            CheckpointUriError::Malformed { uri, reason } => write!(
                f,
                "'{uri}' is not a URI ({reason}): use a local path or a {accepted} URI"
            ),
            CheckpointUriError::UnknownScheme { uri, scheme } => write!(
                f,
                "'{uri}': unsupported scheme '{scheme}': use a local path or a {accepted} URI"
            ),
            CheckpointUriError::NoBucket { uri, scheme } => {
                let holder = scheme.holder();
                write!(
                    f,
                    "'{uri}' names no {holder}: use {scheme}://{}/prefix",
                    holder.to_uppercase()
                )
            }
            CheckpointUriError::NotALocalPath { uri } => write!(
                f,
                "'{uri}' is not a local file path: use file:///absolute/path"
            ),
        }
    }
}

impl std::error::Error for CheckpointUriError {}

/// A checkpoint location that parsed: a local path or a URI of one of the
/// [`Scheme`]s with its bucket or container. It keeps the text as given,
/// which is what launchers pass on (`--output`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointUri {
    text: String,
    scheme: Scheme,
    /// The scheme name, lowercased (`s3a`); `None` for a plain path.
    scheme_name: Option<String>,
    /// The directory, for local locations.
    local: Option<PathBuf>,
}

impl CheckpointUri {
    /// Parse `text`: with `://` a URI of an accepted scheme (in any case;
    /// `file://` an absolute path, the others naming a bucket or container),
    /// without one a local directory (relative paths are relative to the
    /// working directory). URIs are parsed as the trainer's storage layer
    /// (the `url` crate) parses them.
    pub fn parse(text: &str) -> Result<CheckpointUri, CheckpointUriError> {
        if text.trim().is_empty() {
            return Err(CheckpointUriError::Empty);
        }
        if !text.contains("://") {
            return Ok(CheckpointUri {
                text: text.to_string(),
                scheme: Scheme::File,
                scheme_name: None,
                local: Some(PathBuf::from(text)),
            });
        }
        let url = url::Url::parse(text).map_err(|e| CheckpointUriError::Malformed {
            uri: text.to_string(),
            reason: e.to_string(),
        })?;
        let scheme =
            Scheme::from_name(url.scheme()).ok_or_else(|| CheckpointUriError::UnknownScheme {
                uri: text.to_string(),
                scheme: url.scheme().to_string(),
            })?;
        let local = match scheme {
            Scheme::File => {
                Some(
                    url.to_file_path()
                        .map_err(|()| CheckpointUriError::NotALocalPath {
                            uri: text.to_string(),
                        })?,
                )
            }
            _ if url.host_str().is_none_or(str::is_empty) => {
                return Err(CheckpointUriError::NoBucket {
                    uri: text.to_string(),
                    scheme,
                })
            }
            _ => None,
        };
        Ok(CheckpointUri {
            text: text.to_string(),
            scheme,
            scheme_name: Some(url.scheme().to_string()),
            local,
        })
    }

    /// The kind of storage.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The scheme before `://`, lowercased (`s3a`, `file`), or `None` for a
    /// plain path.
    pub fn scheme_name(&self) -> Option<&str> {
        self.scheme_name.as_deref()
    }

    /// Whether it is a plain path rather than a URI: a directory only the
    /// machine that reads it has.
    pub fn is_plain_path(&self) -> bool {
        self.scheme_name.is_none()
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The directory of a local location (`file://` decoded, a plain path
    /// as given); `None` for object storage.
    pub fn local_path(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// Whether it is a directory on the machine itself.
    pub fn is_local(&self) -> bool {
        self.scheme.is_local()
    }
}

impl fmt::Display for CheckpointUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for CheckpointUri {
    type Err = CheckpointUriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckpointUri::parse(s)
    }
}

impl Serialize for CheckpointUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CheckpointUri {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CheckpointUri::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> CheckpointUri {
        CheckpointUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn each_scheme_and_its_aliases_parse() {
        for (text, scheme) in [
            ("s3://bucket/run", Scheme::S3),
            ("s3a://bucket/run", Scheme::S3),
            ("gs://bucket", Scheme::Gcs),
            ("az://container/run", Scheme::Azure),
            ("azure://container/run", Scheme::Azure),
            ("abfs://container/run", Scheme::Azure),
            (
                "abfss://container@account.dfs.core.windows.net/run",
                Scheme::Azure,
            ),
        ] {
            let u = parse(text);
            assert_eq!(u.scheme(), scheme, "{text}");
            assert_eq!((u.as_str(), u.to_string()), (text, text.to_string()));
            assert_eq!(u.scheme_name(), text.split("://").next());
            assert!(!u.is_local() && !u.is_plain_path() && u.local_path().is_none());
        }
        assert_eq!(
            Scheme::all_names().collect::<Vec<_>>(),
            ["file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss"]
        );
        assert_eq!(Scheme::from_name("s3a"), Some(Scheme::S3));
        // Schemes are case-insensitive, as in any URI.
        let upper = parse("GS://bucket/x");
        assert_eq!(
            (upper.scheme(), upper.scheme_name()),
            (Scheme::Gcs, Some("gs"))
        );
        assert_eq!(upper.as_str(), "GS://bucket/x");
        assert_eq!(Scheme::from_name("ftp"), None);
    }

    #[test]
    fn file_uris_and_plain_paths_are_local_directories() {
        let u = parse("file:///tmp/ride%20run");
        assert_eq!(u.scheme(), Scheme::File);
        assert_eq!(u.scheme_name(), Some("file"));
        assert!(u.is_local() && !u.is_plain_path());
        assert_eq!(u.local_path(), Some(Path::new("/tmp/ride run")));
        assert_eq!(
            parse("file://localhost/ckpt").local_path(),
            Some(Path::new("/ckpt"))
        );
        for path in ["output/run", "/data/ckpt", "./x", "s3:/not-a-uri"] {
            let u = parse(path);
            assert_eq!(u.scheme(), Scheme::File, "{path}");
            assert!(u.is_local() && u.is_plain_path(), "{path}");
            assert_eq!(u.scheme_name(), None);
            assert_eq!(u.local_path(), Some(Path::new(path)));
            assert_eq!(u.as_str(), path);
        }
    }

    #[test]
    fn empty_unknown_malformed_bucketless_and_remote_files_are_refused() {
        let err = |s: &str| CheckpointUri::parse(s).expect_err(s);
        assert_eq!(err(""), CheckpointUriError::Empty);
        assert_eq!(err("  "), CheckpointUriError::Empty);
        let e = err("ftp://host/x");
        assert_eq!(
            e,
            CheckpointUriError::UnknownScheme {
                uri: "ftp://host/x".into(),
                scheme: "ftp".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "'ftp://host/x': unsupported scheme 'ftp': use a local path or a \
             file://, s3://, s3a://, gs://, az://, azure://, abfs:// or abfss:// URI"
        );
        assert!(matches!(err("://x"), CheckpointUriError::Malformed { .. }));
        assert!(matches!(
            err("a dir/with ://"),
            CheckpointUriError::Malformed { .. }
        ));
        for (uri, scheme) in [
            ("s3://", Scheme::S3),
            ("s3:///run", Scheme::S3),
            ("gs://", Scheme::Gcs),
            ("az:///x", Scheme::Azure),
        ] {
            assert_eq!(
                err(uri),
                CheckpointUriError::NoBucket {
                    uri: uri.into(),
                    scheme
                }
            );
        }
        assert_eq!(
            err("az://").to_string(),
            "'az://' names no container: use az://CONTAINER/prefix"
        );
        assert_eq!(
            err("file://host/x"),
            CheckpointUriError::NotALocalPath {
                uri: "file://host/x".into()
            }
        );
    }

    #[test]
    fn credentials_are_named_per_scheme() {
        let names = |s: Scheme| -> Vec<(&str, bool)> {
            s.credential_vars()
                .iter()
                .map(|v| (v.name, v.required))
                .collect()
        };
        assert_eq!(
            names(Scheme::S3),
            [
                ("AWS_ACCESS_KEY_ID", true),
                ("AWS_SECRET_ACCESS_KEY", true),
                ("AWS_SESSION_TOKEN", false),
                ("AWS_REGION", false),
                ("AWS_ENDPOINT_URL", false),
                ("AWS_CONDITIONAL_PUT", false),
            ]
        );
        assert_eq!(names(Scheme::Gcs), [("GOOGLE_SERVICE_ACCOUNT_KEY", true)]);
        assert_eq!(
            names(Scheme::Azure),
            [
                ("AZURE_STORAGE_ACCOUNT_NAME", true),
                ("AZURE_STORAGE_ACCOUNT_KEY", true),
                ("AZURE_STORAGE_ENDPOINT", false)
            ]
        );
        assert!(names(Scheme::File).is_empty());
        assert!(Scheme::S3.credential_hint().contains("AWS_ACCESS_KEY_ID"));
        assert!(Scheme::File.credential_hint().contains("file permissions"));
    }

    #[test]
    fn serde_uses_the_text_and_refuses_what_parse_refuses() {
        let u = parse("s3a://b/run");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, "\"s3a://b/run\"");
        assert_eq!(serde_json::from_str::<CheckpointUri>(&json).unwrap(), u);
        assert!(serde_json::from_str::<CheckpointUri>("\"ftp://x/y\"").is_err());
        assert_eq!(
            "gs://b".parse::<CheckpointUri>().unwrap().scheme(),
            Scheme::Gcs
        );
    }
}
