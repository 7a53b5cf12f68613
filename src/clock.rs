//! The broker's two clocks. Only the I/O shell (`shard`), the control plane and the command
//! line read them; the sans-IO core is handed the time with each call.
//!
//! - The **monotonic** clock ([`mono_ms`]) drives keep-alives, expiries, rates and timers. It
//!   starts at [`MONO_START_MS`], so a message restored from the store keeps its true receive
//!   time (up to a year before the start) and ages from it.
//! - The **Unix** clock ([`unix_ms`]) stamps what leaves the process: audit records, token
//!   expiry, stored message times. [`unix_at_mono_zero`] converts between the two.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the monotonic clock starts: one year.
pub const MONO_START_MS: u64 = 365 * 86_400_000;

/// Milliseconds on the broker's monotonic clock.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    MONO_START_MS + START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Unix time, ms.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The Unix time (ms) at which the monotonic clock read 0: add a monotonic time to get Unix
/// time, subtract from a Unix time to get monotonic time.
pub fn unix_at_mono_zero() -> u64 {
    unix_ms().saturating_sub(mono_ms())
}

/// RFC 3339 (UTC, seconds) of a Unix ms time.
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}
