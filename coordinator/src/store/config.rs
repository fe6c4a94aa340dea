//! Which store a coordinator uses: `redb` (embedded, the default) or a PostgreSQL URL.

use std::fmt;
use std::str::FromStr;

/// The `store` setting (`serve --store`, `init --store`).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// The embedded database in the data directory: one coordinator, no server.
    #[default]
    Redb,
    /// A PostgreSQL database shared by every coordinator of the cluster.
    Postgres(PostgresConfig),
}

/// Where the PostgreSQL store is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host:port/db[?sslmode=...]` as given.
    pub url: String,
    /// A password from `PGPASSWORD` or the `store-password-file`, used when the URL
    /// has none.
    pub password: Option<String>,
    /// Extra CA certificates (PEM) to trust for `sslmode=require`, besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            password: None,
            ca_file: None,
        }
    }

    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// Why a `store` value is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store {value:?}: {reason} (expected `redb` or `postgres://user@host:port/db`)")]
pub struct StoreConfigError {
    pub value: String,
    pub reason: String,
}

impl FromStr for StoreConfig {
    type Err = StoreConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "redb" {
            return Ok(StoreConfig::Redb);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Check the URL now so a typo fails at `config check`, not at start.
            s.parse::<tokio_postgres::Config>()
                .map_err(|e| StoreConfigError {
                    value: redact(s),
                    reason: e.to_string(),
                })?;
            return Ok(StoreConfig::Postgres(PostgresConfig::new(s)));
        }
        Err(StoreConfigError {
            value: redact(s),
            reason: "unknown kind of store".into(),
        })
    }
}

impl StoreConfig {
    /// `redb` or `postgres`, for status output.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Redb => "redb",
            StoreConfig::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Redb => f.write_str("redb"),
            StoreConfig::Postgres(pg) => f.write_str(&pg.redacted_url()),
        }
    }
}

// Never print a password, even in a Debug dump of the options.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_others() {
        assert_eq!("redb".parse::<StoreConfig>(), Ok(StoreConfig::Redb));
        let pg: StoreConfig = "postgres://helix@127.0.0.1:5432/helix"
            .parse()
            .expect("valid");
        assert_eq!(pg.kind(), "postgres");
        let err = "mysql://x".parse::<StoreConfig>().expect_err("refused");
        assert!(err.to_string().contains("expected `redb`"), "{err}");
        let err = "postgres://h:notaport/db"
            .parse::<StoreConfig>()
            .expect_err("refused");
        assert!(err.to_string().contains("invalid store"), "{err}");
    }

    #[test]
    fn passwords_never_print() {
        let pg: StoreConfig = "postgres://helix:s3cret@db:5432/helix?sslmode=require"
            .parse()
            .expect("valid");
        for shown in [pg.to_string(), format!("{pg:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("helix:***@db:5432/helix"), "{shown}");
        }
    }
}
