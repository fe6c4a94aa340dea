//! The wall clock, read in one place so the rest of the coordinator takes `now` as a
//! value (and the sans-IO parts never read it).

use helix_protocol::Timestamp;

pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}
