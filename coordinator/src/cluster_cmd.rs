//! `helix-coordinator cluster status`: the coordinators sharing the cluster's store,
//! which one leads, its epoch and when its lease runs out.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use helix_coordinator::client::AdminClient;
use helix_protocol::wire::{AdminRequest, AdminResponse, ClusterStatus};
use helix_protocol::Timestamp;

use crate::cli::ClusterCommand;

pub(crate) async fn run(client: &AdminClient, cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Status { json } => {
            let status = match client.request(AdminRequest::ClusterStatus).await? {
                AdminResponse::Cluster(status) => status,
                other => bail!("unexpected reply: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status, &client.addr()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The status as text: a summary line, then one row per coordinator. Times are shown
/// relative to the status's own `now` (the database's clock, which stamped them), so
/// a skewed clock on the admin's machine does not distort them.
fn render(status: &ClusterStatus, answered_by: &str) -> String {
    let mut out = String::new();
    if status.store == "redb" {
        out.push_str(&format!(
            "Store: redb (one coordinator, {answered_by}; no leader lease)\n"
        ));
    } else {
        let lease = match status.lease_expires {
            Some(t) if status.now.saturating_since(t) < Duration::from_secs(1) => {
                format!(", lease expires {}", relative(status.now, t))
            }
            Some(t) => format!(", lease expired {}", relative(status.now, t)),
            None => String::new(),
        };
        out.push_str(&format!(
            "Store: {}, epoch {}, leader {}{lease}\n",
            status.store,
            status.epoch,
            status
                .leader
                .as_deref()
                .unwrap_or("none (election in progress)"),
        ));
    }
    if status.coordinators.is_empty() {
        return out;
    }
    let header = ["ADDRESS", "ROLE", "LAST SEEN", "VERSION"];
    let rows: Vec<[String; 4]> = status
        .coordinators
        .iter()
        .map(|c| {
            [
                c.advertise.clone(),
                if c.leader { "leader" } else { "standby" }.to_string(),
                relative(status.now, c.last_seen),
                c.version.clone(),
            ]
        })
        .collect();
    out.push_str(&crate::table::render(header, &rows));
    out
}

/// `in 7s`, `3s ago` or `now`, to the second.
fn relative(now: Timestamp, t: Timestamp) -> String {
    let secs = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    if t > now {
        let d = t.saturating_since(now);
        if d.as_secs() == 0 {
            return "now".into();
        }
        format!("in {}", secs(d))
    } else {
        let d = now.saturating_since(t);
        if d.as_secs() == 0 {
            return "now".into();
        }
        format!("{} ago", secs(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helix_protocol::wire::CoordinatorInfo;

    #[track_caller]
    fn check(now: u64, t: u64, expected: &str) {
        assert_eq!(
            relative(Timestamp::from_millis(now), Timestamp::from_millis(t)),
            expected
        );
    }

    #[test]
    fn times_are_relative_to_the_status_clock() {
        check(10_000, 17_400, "in 7s");
        check(10_000, 7_000, "3s ago");
        check(10_000, 10_500, "now");
        check(10_000, 9_500, "now");
        check(0, 90_000, "in 1m 30s");
    }

    #[test]
    fn a_shared_store_shows_each_coordinator_and_the_leader() {
        let status = ClusterStatus {
            store: "postgres".into(),
            epoch: 7,
            leader: Some("coord-1.example.com:7443".into()),
            lease_expires: Some(Timestamp::from_millis(107_000)),
            now: Timestamp::from_millis(100_000),
            coordinators: vec![
                CoordinatorInfo {
                    advertise: "coord-1.example.com:7443".into(),
                    leader: true,
                    last_seen: Timestamp::from_millis(99_000),
                    version: "0.1.0".into(),
                },
                CoordinatorInfo {
                    advertise: "coord-2.example.com:7443".into(),
                    leader: false,
                    last_seen: Timestamp::from_millis(98_000),
                    version: "0.1.0".into(),
                },
            ],
        };
        let text = render(&status, "coord-1.example.com:7443");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "Store: postgres, epoch 7, leader coord-1.example.com:7443, lease expires in 7s",
                "ADDRESS                   ROLE     LAST SEEN  VERSION",
                "coord-1.example.com:7443  leader   1s ago     0.1.0",
                "coord-2.example.com:7443  standby  2s ago     0.1.0",
            ]
        );
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["epoch"], 7);
        assert_eq!(json["coordinators"][1]["leader"], false);
    }

    #[test]
    fn the_embedded_store_has_no_lease() {
        let status = ClusterStatus {
            store: "redb".into(),
            epoch: 0,
            leader: None,
            lease_expires: None,
            now: Timestamp::from_millis(1),
            coordinators: Vec::new(),
        };
        let mut expired = status.clone();
        expired.store = "postgres".into();
        expired.epoch = 3;
        expired.leader = Some("a:1".into());
        expired.now = Timestamp::from_millis(20_000);
        expired.lease_expires = Some(Timestamp::from_millis(15_000));
        assert_eq!(
            render(&expired, "a:1"),
            "Store: postgres, epoch 3, leader a:1, lease expired 5s ago\n"
        );
        assert_eq!(
            render(&status, "127.0.0.1:7443"),
            "Store: redb (one coordinator, 127.0.0.1:7443; no leader lease)\n"
        );
    }
}
