//! Turning the store and lease options of `init` and `serve` into what the library
//! takes: the PostgreSQL password found by precedence (URL, then
//! `store-password-file`, then `PGPASSWORD`), and lease timings checked against each
//! other. Checked here, before anything starts, so a mistake is a usage error (exit 2)
//! that names the option, not a failed election later.

use std::path::Path;
use std::time::Duration;

use helix_coordinator::server::LeaseConfig;
use helix_coordinator::store::config::{PostgresConfig, StoreConfig};

use crate::cli::StoreArgs;

/// The environment variable libpq and psql read a password from; the last resort.
pub(crate) const PGPASSWORD: &str = "PGPASSWORD";

/// The lease timings, refused unless the leader renews at least twice per lease: a
/// renewal may fail (a slow query, a database failover) and the next one must still
/// land before the lease runs out, or every hiccup would cost a leader.
pub(crate) fn lease(ttl: Duration, renew: Duration) -> Result<LeaseConfig, String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if ttl.is_zero() || renew.is_zero() {
        return Err("lease-ttl and lease-renew must be positive durations, e.g. 10s and 2s".into());
    }
    if renew >= ttl / 2 {
        return Err(format!(
            "lease-renew ({}) must be less than half of lease-ttl ({}), so the leader renews at least twice before its lease runs out (e.g. lease-ttl 10s, lease-renew 2s)",
            show(renew),
            show(ttl)
        ));
    }
    Ok(LeaseConfig { ttl, renew })
}

/// Where the password for a PostgreSQL store came from, for the log (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    Url,
    File,
    Env,
    None,
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordSource::Url => "the store URL",
            PasswordSource::File => "store-password-file",
            PasswordSource::Env => PGPASSWORD,
            PasswordSource::None => "nowhere (no password)",
        })
    }
}

/// The store to use, with its password and CA file resolved. `pg_password` is the
/// value of `PGPASSWORD` (passed in so tests do not touch the process environment).
pub(crate) fn store(
    args: &StoreArgs,
    pg_password: Option<String>,
) -> Result<(StoreConfig, PasswordSource), String> {
    let pg = match &args.store {
        StoreConfig::Redb => {
            for (flag, set) in [
                ("store-password-file", args.store_password_file.is_some()),
                ("store-ca-file", args.store_ca_file.is_some()),
            ] {
                if set {
                    tracing::warn!("{flag} is ignored: the store is redb, not PostgreSQL");
                }
            }
            return Ok((StoreConfig::Redb, PasswordSource::None));
        }
        StoreConfig::Postgres(pg) => pg,
    };
    let mut pg = PostgresConfig {
        url: pg.url.clone(),
        password: None,
        ca_file: None,
    };
    if let Some(ca) = &args.store_ca_file {
        std::fs::metadata(ca)
            .map_err(|e| format!("cannot use store-ca-file {}: {e}", ca.display()))?;
        pg.ca_file = Some(ca.clone());
    }
    let source = if url_has_password(&pg.url) {
        if args.store_password_file.is_some() {
            tracing::warn!("store-password-file is ignored: the store URL has a password");
        }
        PasswordSource::Url
    } else if let Some(file) = &args.store_password_file {
        pg.password = Some(read_password(file)?);
        PasswordSource::File
    } else if let Some(p) = pg_password.filter(|p| !p.is_empty()) {
        pg.password = Some(p);
        PasswordSource::Env
    } else {
        PasswordSource::None
    };
    Ok((StoreConfig::Postgres(pg), source))
}

/// Whether the URL itself carries a password (it then wins over the file and the
/// environment, as it does for libpq).
fn url_has_password(url: &str) -> bool {
    url.parse::<tokio_postgres::Config>()
        .is_ok_and(|c| c.get_password().is_some_and(|p| !p.is_empty()))
}

/// The password in `file`: refused when group or others can read the file, like every
/// key file of Helix; one line, its line ending not part of the password.
fn read_password(file: &Path) -> Result<String, String> {
    let text = helix_transport::files::read_secret(file)
        .map_err(|e| format!("cannot use store-password-file: {e}"))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "cannot use store-password-file: {} is empty",
            file.display()
        ));
    }
    if password.contains('\n') {
        return Err(format!(
            "cannot use store-password-file: {} holds more than one line; put only the password in it",
            file.display()
        ));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    #[track_caller]
    fn check_lease(ttl: &str, renew: &str, ok: bool) {
        let parse = |s: &str| humantime::parse_duration(s).expect("duration");
        let got = lease(parse(ttl), parse(renew));
        assert_eq!(got.is_ok(), ok, "ttl {ttl} renew {renew}: {got:?}");
        if let Err(e) = got {
            assert!(e.contains("lease-renew") || e.contains("positive"), "{e}");
        }
    }

    #[test]
    fn renew_must_be_under_half_the_ttl() {
        check_lease("10s", "2s", true);
        check_lease("10s", "4999ms", true);
        check_lease("10s", "5s", false);
        check_lease("10s", "6s", false);
        check_lease("10s", "10s", false);
        check_lease("10s", "0s", false);
        check_lease("0s", "1s", false);
        check_lease("1m", "20s", true);
        let e = lease(Duration::from_secs(10), Duration::from_secs(5)).expect_err("refused");
        assert!(e.contains("(5s)") && e.contains("(10s)"), "{e}");
    }

    fn args(store: &str, file: Option<PathBuf>) -> StoreArgs {
        StoreArgs {
            store: store.parse().expect("store"),
            store_password_file: file,
            store_ca_file: None,
        }
    }

    fn password_of(cfg: &StoreConfig) -> Option<String> {
        match cfg {
            StoreConfig::Postgres(pg) => pg.password.clone(),
            StoreConfig::Redb => None,
        }
    }

    #[test]
    fn the_password_comes_from_the_url_then_the_file_then_pgpassword() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("pw");
        std::fs::write(&file, "from-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let env = || Some("from-env".to_string());

        let (cfg, src) = store(
            &args("postgres://u:in-url@db/helix", Some(file.clone())),
            env(),
        )
        .expect("ok");
        assert_eq!((password_of(&cfg), src), (None, PasswordSource::Url));

        let (cfg, src) =
            store(&args("postgres://u@db/helix", Some(file.clone())), env()).expect("ok");
        assert_eq!(
            (password_of(&cfg).as_deref(), src),
            (Some("from-file"), PasswordSource::File)
        );

        let (cfg, src) = store(&args("postgres://u@db/helix", None), env()).expect("ok");
        assert_eq!(
            (password_of(&cfg).as_deref(), src),
            (Some("from-env"), PasswordSource::Env)
        );

        let (cfg, src) = store(&args("postgres://u@db/helix", None), None).expect("ok");
        assert_eq!((password_of(&cfg), src), (None, PasswordSource::None));

        let (cfg, _) = store(&args("redb", Some(file)), env()).expect("ok");
        assert_eq!(cfg, StoreConfig::Redb);
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = store(&args("postgres://u@db/helix", Some(file.clone())), None)
                .expect_err("refused");
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&file, "\n").expect("write");
        let err =
            store(&args("postgres://u@db/helix", Some(file.clone())), None).expect_err("empty");
        assert!(err.contains("is empty"), "{err}");
        let missing = tmp.path().join("missing");
        let err = store(&args("postgres://u@db/helix", Some(missing)), None).expect_err("missing");
        assert!(err.contains("store-password-file"), "{err}");
    }
}
