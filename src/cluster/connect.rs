//! Connecting the processes of a cluster: one authenticated TCP connection between every
//! two processes, made within the connect timeout, before timely starts on them.
//!
//! Process `i` connects to the processes before it and accepts the ones after it (as
//! timely's own set-up does, which retries forever and polls once a second). Every
//! connection goes through the [handshake](super::handshake) first. Accepting never waits
//! on one connection: each accepted connection's handshake is stepped without blocking,
//! under its own deadline, and a connection that closes, stays silent, speaks another
//! protocol or fails to prove the secret is dropped while accepting goes on.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::config::ClusterConfig;
use super::handshake::{Accepted, Auth, Incoming, introduce};
use crate::error::{FlowError, Result, panic_message};

/// At most this many handshakes in progress at once; connections beyond are closed at
/// once (a flood of connections cannot exhaust this process's descriptors).
const MAX_HANDSHAKES: usize = 64;
/// At most this many reasons for rejected connections are kept for the error message.
const MAX_REJECTED: usize = 8;

/// Waiting for a peer: a short sleep at first, doubled each time nothing happened, up to
/// `max`. Connecting is on the path of every run (a handshake is a few round trips of
/// microseconds on a local network); a fixed sleep of milliseconds per round trip cost
/// more than a small job's run.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_micros(50);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    /// Sleeps, and makes the next sleep longer.
    fn wait(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(self.max);
    }

    /// Something happened: the next wait is short again.
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// One connection to every other process, in process order (`None` for this one), each
/// authenticated, made within the connect timeout.
pub(crate) fn sockets(config: &ClusterConfig) -> Result<Vec<Option<TcpStream>>> {
    let (index, hosts) = (config.index, &config.hosts);
    let deadline = Instant::now() + config.connect_timeout;
    let cluster_error = |message: String| FlowError::Cluster {
        process: index,
        message,
    };
    let Some(secret) = &config.secret else {
        // `validate` requires a secret for several processes.
        return Err(FlowError::Config("a cluster needs a shared secret".into()));
    };
    let auth = Auth::new(secret, hosts, index);
    let listener = TcpListener::bind(&hosts[index])
        .map_err(|error| cluster_error(format!("cannot listen on {}: {error}", hosts[index])))?;
    listener.set_nonblocking(true)?;
    let timed_out = |waiting: String| {
        cluster_error(format!(
            "could not connect to all {} processes ({}) within {:?}: {waiting}",
            hosts.len(),
            hosts.join(", "),
            config.connect_timeout
        ))
    };
    std::thread::scope(|scope| {
        let accepting = scope.spawn(|| accept(&listener, &auth, config, deadline));
        let mut sockets: Vec<Option<TcpStream>> = Vec::with_capacity(hosts.len());
        let mut connecting = Ok(());
        for (peer, host) in hosts.iter().enumerate().take(index) {
            match connect(&auth, peer, host, config.handshake_timeout, deadline) {
                Ok(stream) => sockets.push(Some(stream)),
                Err(waiting) => {
                    connecting = Err(timed_out(waiting));
                    break;
                }
            }
        }
        let accepted = accepting
            .join()
            .map_err(|payload| cluster_error(panic_message(payload.as_ref())))?;
        connecting?;
        sockets.push(None);
        sockets.extend(accepted.map_err(timed_out)?);
        Ok(sockets)
    })
}

/// Connects to process `peer` at `host` and makes the handshake, retrying (a peer not
/// listening yet, a connection that failed its handshake) until `deadline`. The error
/// names the peer and the reason of the last attempt that had its whole time: one cut
/// short by `deadline` says only that time ran out, while the attempt before it may
/// have been refused for a reason the user can act on (a wrong secret).
fn connect(
    auth: &Auth,
    peer: usize,
    host: &str,
    handshake_timeout: Duration,
    deadline: Instant,
) -> std::result::Result<TcpStream, String> {
    let mut last = String::from("no attempt");
    let mut backoff = Backoff::new(Duration::from_millis(10));
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("process {peer} at {host}: {last}"));
        }
        let whole = now + handshake_timeout;
        let attempt = deadline.min(whole);
        match attempt_connect(auth, peer, host, attempt) {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                let cut_short = attempt < whole && Instant::now() >= attempt;
                if !cut_short || last == "no attempt" {
                    last = error;
                }
            }
        }
        backoff.wait();
    }
}

fn attempt_connect(
    auth: &Auth,
    peer: usize,
    host: &str,
    deadline: Instant,
) -> std::result::Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = host
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve: {error}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for address in addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut stream = match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => stream,
            Err(error) => {
                last = error.to_string();
                continue;
            }
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        introduce(&mut stream, auth, peer, deadline)?;
        return Ok(stream);
    }
    Err(last)
}

/// Accepts the processes after this one until each has joined or `deadline` passes.
fn accept(
    listener: &TcpListener,
    auth: &Auth,
    config: &ClusterConfig,
    deadline: Instant,
) -> std::result::Result<Vec<Option<TcpStream>>, String> {
    let index = config.index;
    let later = config.hosts.len() - index - 1;
    let mut accepted: Vec<Option<TcpStream>> = (0..later).map(|_| None).collect();
    let mut pending: Vec<Box<Incoming>> = Vec::new();
    let mut rejected: Vec<String> = Vec::new();
    let reject = |rejected: &mut Vec<String>, why: String| {
        if rejected.len() < MAX_REJECTED {
            rejected.push(why);
        }
    };
    let accepts = |peer: usize| peer > index && peer <= index + later;
    let mut backoff = Backoff::new(Duration::from_millis(2));
    while accepted.iter().any(Option::is_none) {
        let mut moved = false;
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    moved = true;
                    if pending.len() >= MAX_HANDSHAKES {
                        reject(
                            &mut rejected,
                            format!("{from}: too many handshakes at once"),
                        );
                        continue;
                    }
                    let until = deadline.min(Instant::now() + config.handshake_timeout);
                    match Incoming::new(stream, from, until) {
                        Ok(incoming) => pending.push(Box::new(incoming)),
                        Err(error) => reject(&mut rejected, format!("{from}: {error}")),
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // A connection reset before it was accepted, or no descriptor left
                    // for now: not this cluster's failure; keep accepting.
                    reject(&mut rejected, format!("accept failed: {error}"));
                    break;
                }
            }
        }
        for incoming in std::mem::take(&mut pending) {
            let (state, stepped) = incoming.step(auth, accepts);
            moved |= stepped;
            match state {
                Accepted::Pending(incoming) => pending.push(incoming),
                // A process that joins again (its first attempt failed on its side)
                // replaces its earlier connection.
                Accepted::Joined { peer, stream } => accepted[peer - index - 1] = Some(stream),
                Accepted::Rejected(why) => reject(&mut rejected, why),
            }
        }
        if accepted.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = accepted
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none())
                .map(|(slot, _)| (index + 1 + slot).to_string())
                .collect();
            let mut waiting = format!("no connection from process {}", missing.join(", "));
            if !rejected.is_empty() {
                waiting.push_str(&format!(
                    " (connections dropped meanwhile: {})",
                    rejected.join("; ")
                ));
            }
            return Err(waiting);
        }
        if moved {
            backoff.reset();
        } else {
            backoff.wait();
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_cap_and_starts_short_again() {
        let mut backoff = Backoff::new(Duration::from_micros(300));
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(backoff.next);
            backoff.wait();
        }
        let micros: Vec<u128> = waits.iter().map(Duration::as_micros).collect();
        assert_eq!(micros, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next, Backoff::FIRST);
    }
}
