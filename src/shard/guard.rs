//! Start-up guards against a second broker: an exclusive lock on `data_dir` (two processes
//! writing one store corrupt it) and a check that no other process already listens on a
//! configured address (SO_REUSEPORT would let the second broker silently take a share of the
//! connections).

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a start waits for an address held by a process that just died (a kill -9 leaves
/// its listening sockets for a moment while io_uring tears down).
const PORT_WAIT: Duration = Duration::from_secs(3);

/// Takes the exclusive lock of `data_dir` (`data_dir/coremq.lock`, holding this pid) for as
/// long as the returned file is open.
pub fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: cannot create: {e}", data_dir.display()))?;
    let path = data_dir.join("coremq.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    if f.try_lock().is_err() {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
        return Err(format!(
            "data_dir {} is in use by another coremq{who}; stop it first, or give this one another data_dir",
            data_dir.display()
        ));
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok(f)
}

/// Fails when a socket already listens on `addr` (the kernel's table of listening TCP
/// sockets, `/proc/net/tcp` and `tcp6`; connections left over from an earlier run do not
/// count), after waiting up to [`PORT_WAIT`] for one that is going away.
pub fn check_address_free(what: &str, addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + PORT_WAIT;
    while listening(addr) {
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} {addr}: already served by another process (another coremq?); stop it or bind elsewhere"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether a TCP socket listens on `addr` (or on the wildcard address of its family, or
/// `addr` is a wildcard and one listens on its port).
fn listening(addr: SocketAddr) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|t| t.lines().skip(1).any(|l| listens_on(l, addr)))
    })
}

/// One row of `/proc/net/tcp{,6}`: `sl local_address rem_address st …`, the address as the
/// kernel's 32-bit words in hex (host order), the port in hex; state `0A` is LISTEN.
fn listens_on(row: &str, addr: SocketAddr) -> bool {
    let mut cols = row.split_whitespace().skip(1);
    let (Some(local), Some(_), Some("0A")) = (cols.next(), cols.next(), cols.next()) else { return false };
    let Some((ip_hex, port_hex)) = local.split_once(':') else { return false };
    if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
        return false;
    }
    let mut bytes = Vec::with_capacity(16);
    for w in 0..ip_hex.len() / 8 {
        let Ok(word) = u32::from_str_radix(&ip_hex[w * 8..w * 8 + 8], 16) else { return false };
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..]).expect("4 bytes")).into(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).expect("16 bytes")).into(),
        _ => return false,
    };
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, Into::into),
        v4 => v4,
    };
    ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).unwrap_err();
        assert!(e.contains("in use by another coremq") && e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        lock_data_dir(dir.path()).unwrap();
    }

    #[test]
    fn proc_net_tcp_rows_are_read() {
        let a: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let row =
            "   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1";
        assert!(listens_on(row, a));
        assert!(!listens_on(&row.replace(" 0A ", " 01 "), a), "an established connection");
        assert!(listens_on(&row.replace("0100007F", "00000000"), a), "the wildcard address");
        assert!(!listens_on(&row.replace("075B", "075C"), a));
        let v6 = "   0: 00000000000000000000000001000000:075B 00000000000000000000000000000000:0000 0A 0";
        assert!(listens_on(v6, "[::1]:1883".parse().unwrap()));
    }

    #[test]
    fn an_address_someone_listens_on_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t0 = Instant::now();
        let e = check_address_free("listener[0]", addr).unwrap_err();
        assert!(e.contains("already served by another process"), "{e}");
        assert!(t0.elapsed() >= PORT_WAIT);
        drop(l);
        check_address_free("listener[0]", addr).unwrap();
    }
}
