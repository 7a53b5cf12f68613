//! A report at most once a second for events a client can repeat at will (refused logins,
//! refused handshakes, quota hits): the first at once, the rest counted into the next, so the log
//! says what happens without becoming the attack's amplifier.

/// One rate-limited stream of log lines.
#[derive(Debug, Default)]
pub struct EverySecond {
    last_ms: u64,
    folded: u64,
}

impl EverySecond {
    /// Whether to write a line at `now_ms`: `Some(n)` with the `n` events folded since the
    /// last line, or `None` (this one is counted into the next).
    pub fn tick(&mut self, now_ms: u64) -> Option<u64> {
        if self.last_ms != 0 && now_ms < self.last_ms + 1000 {
            self.folded += 1;
            return None;
        }
        self.last_ms = now_ms.max(1);
        Some(std::mem::take(&mut self.folded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_rest_counted() {
        let mut e = EverySecond::default();
        assert_eq!(e.tick(5_000), Some(0));
        assert_eq!(e.tick(5_100), None);
        assert_eq!(e.tick(5_900), None);
        assert_eq!(e.tick(6_000), Some(2));
        assert_eq!(e.tick(9_000), Some(0));
    }
}
