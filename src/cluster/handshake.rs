//! The handshake every connection between two processes of a cluster makes before timely
//! uses it: both sides prove they hold the cluster's shared secret, and the connecting
//! side says which process it is.
//!
//! Challenge–response over fresh nonces from both sides, so a recorded handshake cannot be
//! replayed and neither side ever sends the secret (or anything derived from it alone):
//!
//! ```text
//! acceptor  → connector   MAGIC, nonce_a                                (40 bytes)
//! connector → acceptor    MAGIC, index_c, nonce_c, mac("connect", ..)   (80 bytes)
//! acceptor  → connector   mac("accept", ..)                             (32 bytes)
//! ```
//!
//! Each `mac` is keyed BLAKE3 under a key derived from the secret, over a label, the
//! fingerprint of the host list, both processes' indices and both nonces. The label keeps
//! one side's answer from serving as the other's; the indices keep an answer meant for one
//! process from being replayed to another; the fingerprint keeps processes of two clusters
//! that share a secret apart. The acceptor checks the connector's `mac` before it answers
//! with its own, so a stranger learns nothing but the magic and a nonce.
//!
//! This authenticates the connection when it is made; it does not encrypt what timely
//! sends over it afterwards (see the [module docs](super#security)).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::config::Secret;

/// Identifies the protocol and its version: anything else is not a flowstage process.
const MAGIC: [u8; 8] = *b"FLOWSTG\x01";
const NONCE: usize = 32;
const MAC: usize = 32;
const CHALLENGE: usize = MAGIC.len() + NONCE;
const RESPONSE: usize = MAGIC.len() + 8 + NONCE + MAC;

/// What one process knows to authenticate its connections: the key, the host list's
/// fingerprint and its own index.
#[derive(Clone)]
pub(crate) struct Auth {
    key: [u8; 32],
    fingerprint: [u8; 32],
    index: usize,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(secret: &Secret, hosts: &[String], index: usize) -> Self {
        let mut fingerprint = blake3::Hasher::new();
        for host in hosts {
            fingerprint.update(host.as_bytes()).update(b"\n");
        }
        Auth {
            key: secret.key(),
            fingerprint: *fingerprint.finalize().as_bytes(),
            index,
        }
    }

    /// The proof that whoever made it holds the key, for the connection from process
    /// `connector` to process `acceptor` with these nonces.
    fn mac(
        &self,
        label: &[u8],
        acceptor: usize,
        connector: usize,
        nonce_a: &[u8],
        nonce_c: &[u8],
    ) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher
            .update(label)
            .update(&self.fingerprint)
            .update(&(acceptor as u64).to_be_bytes())
            .update(&(connector as u64).to_be_bytes())
            .update(nonce_a)
            .update(nonce_c);
        hasher.finalize()
    }
}

fn nonce() -> std::io::Result<[u8; NONCE]> {
    let mut nonce = [0u8; NONCE];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nonce)
}

/// Reads exactly `buf.len()` bytes before `deadline` (a read timeout alone would let a
/// peer that trickles one byte at a time hold the connection forever).
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer within the handshake deadline ({filled} of {} bytes)",
                buf.len()
            ));
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(format!(
                    "closed the connection during the handshake ({filled} of {} bytes; is \
                     the secret the same in every process?)",
                    buf.len()
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// The connecting side: introduces this process to process `peer` on `stream` and checks
/// that `peer` holds the secret too, all before `deadline`.
pub(crate) fn introduce(
    stream: &mut TcpStream,
    auth: &Auth,
    peer: usize,
    deadline: Instant,
) -> Result<(), String> {
    let mut challenge = [0u8; CHALLENGE];
    read_by(stream, &mut challenge, deadline)?;
    let (magic, nonce_a) = challenge.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("it is not a flowstage cluster process (or another version)".into());
    }
    let nonce_c = nonce().map_err(|e| format!("no random nonce: {e}"))?;
    let mut response = Vec::with_capacity(RESPONSE);
    response.extend_from_slice(&MAGIC);
    response.extend_from_slice(&(auth.index as u64).to_be_bytes());
    response.extend_from_slice(&nonce_c);
    let mac = auth.mac(b"connect", peer, auth.index, nonce_a, &nonce_c);
    response.extend_from_slice(mac.as_bytes());
    stream
        .set_write_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .and_then(|()| stream.write_all(&response))
        .map_err(|e| format!("the handshake failed: {e}"))?;
    let mut proof = [0u8; MAC];
    read_by(stream, &mut proof, deadline)?;
    if auth.mac(b"accept", peer, auth.index, nonce_a, &nonce_c) != proof {
        return Err("it failed to prove the shared secret".into());
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| e.to_string())
}

/// Where an accepted connection's handshake stands.
enum Stage {
    /// Sending the challenge.
    Challenge,
    /// Waiting for the response.
    Response,
    /// Sending the proof; the connection is process `peer`'s once it is sent.
    Proof { peer: usize },
}

/// The accepting side of one connection's handshake, stepped without blocking so that a
/// silent or slow connection never holds up the others.
pub(crate) struct Incoming {
    stream: TcpStream,
    from: SocketAddr,
    deadline: Instant,
    stage: Stage,
    nonce_a: [u8; NONCE],
    /// Bytes to send, and how many are sent.
    out: Vec<u8>,
    sent: usize,
    /// Bytes received of the response.
    response: [u8; RESPONSE],
    received: usize,
}

/// The outcome of stepping an [`Incoming`] handshake.
pub(crate) enum Accepted {
    /// Not finished: step it again later.
    Pending(Box<Incoming>),
    /// Process `peer` proved the secret: its connection, blocking again.
    Joined { peer: usize, stream: TcpStream },
    /// Not one of this cluster's processes (or it gave up): why, naming the address.
    Rejected(String),
}

impl Incoming {
    /// Starts the handshake of a connection accepted from `from`, to finish by `deadline`.
    pub(crate) fn new(
        stream: TcpStream,
        from: SocketAddr,
        deadline: Instant,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let nonce_a = nonce()?;
        let mut out = Vec::with_capacity(CHALLENGE);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&nonce_a);
        Ok(Incoming {
            stream,
            from,
            deadline,
            stage: Stage::Challenge,
            nonce_a,
            out,
            sent: 0,
            response: [0; RESPONSE],
            received: 0,
        })
    }

    /// Does what can be done now; `accepts(peer)` says whether process `peer` may connect
    /// to this one. Returns the handshake's state and whether it moved.
    pub(crate) fn step(
        mut self: Box<Self>,
        auth: &Auth,
        accepts: impl Fn(usize) -> bool,
    ) -> (Accepted, bool) {
        let mut moved = false;
        loop {
            let result = match self.stage {
                Stage::Challenge | Stage::Proof { .. } => self.send(),
                Stage::Response => self.receive(),
            };
            match result {
                Ok(true) => moved = true,
                Ok(false) if Instant::now() >= self.deadline => {
                    let what = match self.stage {
                        Stage::Response => format!(
                            "silent past the handshake deadline ({} of {RESPONSE} bytes)",
                            self.received
                        ),
                        _ => "not reading past the handshake deadline".into(),
                    };
                    return (self.reject(&what), moved);
                }
                Ok(false) => return (Accepted::Pending(self), moved),
                Err(error) => return (self.reject(&error), true),
            }
            match self.stage {
                Stage::Challenge if self.sent == self.out.len() => {
                    self.stage = Stage::Response;
                }
                Stage::Response if self.received == RESPONSE => match self.verify(auth, &accepts) {
                    Ok(peer) => {
                        let proof = auth.mac(
                            b"accept",
                            auth.index,
                            peer,
                            &self.nonce_a,
                            &self.response[16..16 + NONCE],
                        );
                        self.out = proof.as_bytes().to_vec();
                        self.sent = 0;
                        self.stage = Stage::Proof { peer };
                    }
                    Err(error) => return (self.reject(&error), true),
                },
                Stage::Proof { peer } if self.sent == self.out.len() => {
                    let stream = self.stream;
                    return match stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_nodelay(true))
                    {
                        Ok(()) => (Accepted::Joined { peer, stream }, true),
                        Err(error) => (Accepted::Rejected(format!("{}: {error}", self.from)), true),
                    };
                }
                _ => {}
            }
        }
    }

    fn reject(&self, why: &str) -> Accepted {
        Accepted::Rejected(format!("{}: {why}", self.from))
    }

    /// Sends what is left of `out`; whether anything went.
    fn send(&mut self) -> Result<bool, String> {
        if self.sent == self.out.len() {
            return Ok(false);
        }
        match self.stream.write(&self.out[self.sent..]) {
            Ok(0) => Err("closed the connection".into()),
            Ok(n) => {
                self.sent += n;
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(e) => Err(format!("the connection failed: {e}")),
        }
    }

    /// Receives more of the response; whether anything came.
    fn receive(&mut self) -> Result<bool, String> {
        if self.received == RESPONSE {
            return Ok(false);
        }
        match self.stream.read(&mut self.response[self.received..]) {
            Ok(0) => Err(format!(
                "closed the connection during the handshake ({} of {RESPONSE} bytes)",
                self.received
            )),
            Ok(n) => {
                self.received += n;
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(e) => Err(format!("the connection failed: {e}")),
        }
    }

    /// The index of the process that answered, if it proved the secret.
    fn verify(&self, auth: &Auth, accepts: impl Fn(usize) -> bool) -> Result<usize, String> {
        let (magic, rest) = self.response.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err("not a flowstage cluster process (or another version)".into());
        }
        let (index, rest) = rest.split_at(8);
        let (nonce_c, mac) = rest.split_at(NONCE);
        let mut claimed = [0u8; 8];
        claimed.copy_from_slice(index);
        let peer = usize::try_from(u64::from_be_bytes(claimed)).unwrap_or(usize::MAX);
        if auth.mac(b"connect", auth.index, peer, &self.nonce_a, nonce_c) != *mac {
            return Err(
                "failed to prove the shared secret (a wrong secret, or a process of another \
                 cluster)"
                    .into(),
            );
        }
        if !accepts(peer) {
            return Err(format!(
                "process {peer} connected, but process {} does not accept it (it connects to \
                 the processes before it)",
                auth.index
            ));
        }
        Ok(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn auth(secret: &str, index: usize) -> Auth {
        let hosts = ["a:1".to_string(), "b:2".to_string()];
        Auth::new(&Secret::new(secret.as_bytes()), &hosts, index)
    }

    /// Runs the acceptor's handshake to its end on one accepted connection.
    fn accept(listener: &TcpListener, auth: &Auth) -> Accepted {
        let (stream, from) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut incoming = Box::new(Incoming::new(stream, from, deadline).unwrap());
        loop {
            match incoming.step(auth, |peer| peer == 1).0 {
                Accepted::Pending(next) => incoming = next,
                done => return done,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn handshake(acceptor: Auth, connector: Auth) -> (Accepted, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let connecting = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            introduce(&mut stream, &connector, 0, deadline)
        });
        let accepted = accept(&listener, &acceptor);
        (accepted, connecting.join().unwrap())
    }

    #[test]
    fn the_same_secret_joins_and_names_the_peer() {
        let (accepted, introduced) = handshake(auth("s3cret", 0), auth("s3cret", 1));
        assert!(matches!(accepted, Accepted::Joined { peer: 1, .. }));
        assert_eq!(introduced, Ok(()));
    }

    #[test]
    fn a_wrong_secret_is_rejected_on_both_sides() {
        let (accepted, introduced) = handshake(auth("s3cret", 0), auth("guess", 1));
        match accepted {
            Accepted::Rejected(why) => assert!(why.contains("shared secret"), "{why}"),
            _ => panic!("a wrong secret joined"),
        }
        assert!(introduced.unwrap_err().contains("closed"));
    }

    #[test]
    fn another_host_list_is_rejected_even_with_the_secret() {
        let other = Auth::new(
            &Secret::new(b"s3cret"),
            &["a:1".to_string(), "c:3".to_string()],
            1,
        );
        let (accepted, _) = handshake(auth("s3cret", 0), other);
        assert!(matches!(accepted, Accepted::Rejected(_)));
    }

    #[test]
    fn a_process_that_should_not_connect_is_rejected() {
        // Index 0 connecting to index 0: authenticated, but not accepted.
        let (accepted, _) = handshake(auth("s3cret", 0), auth("s3cret", 0));
        match accepted {
            Accepted::Rejected(why) => assert!(why.contains("does not accept"), "{why}"),
            _ => panic!("process 0 was accepted by itself"),
        }
    }

    #[test]
    fn an_impostor_acceptor_fails_the_connector() {
        // A listener that answers the response with garbage: the connector refuses it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let impostor = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut challenge = MAGIC.to_vec();
            challenge.extend([7u8; NONCE]);
            stream.write_all(&challenge).unwrap();
            let mut response = [0u8; RESPONSE];
            stream.read_exact(&mut response).unwrap();
            stream.write_all(&[0u8; MAC]).unwrap();
        });
        let mut stream = TcpStream::connect(address).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let error = introduce(&mut stream, &auth("s3cret", 1), 0, deadline).unwrap_err();
        assert!(error.contains("failed to prove"), "{error}");
        impostor.join().unwrap();
    }

    #[test]
    fn a_silent_acceptor_fails_the_connector_at_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        let error = introduce(&mut stream, &auth("s3cret", 1), 0, deadline).unwrap_err();
        assert!(error.contains("handshake deadline"), "{error}");
    }
}
