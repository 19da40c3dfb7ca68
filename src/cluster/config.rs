//! [`ClusterConfig`]: which process this is, where the others are, and the run's limits.

use std::path::Path;
use std::time::Duration;

use crate::error::{FlowError, Result};

/// Where a cluster run takes place and how it is bounded: the processes (one address per
/// process, the same list in every process), this process's index, the worker threads
/// per process, the shared secret the processes authenticate each other with, and the
/// limits of the run (connect timeout, backpressure).
///
/// Every process runs the same program with the same hosts and its own index.
///
/// ```
/// use flowstage::cluster::ClusterConfig;
/// use std::time::Duration;
///
/// // One process with two workers: no network at all.
/// let local = ClusterConfig::local(2);
/// assert_eq!(local.workers(), 2);
///
/// // Process 1 of three on two machines, two workers each.
/// let hosts = ["10.0.0.1:7000", "10.0.0.1:7001", "10.0.0.2:7000"];
/// let config = ClusterConfig::process(1, hosts)
///     .threads(2)
///     .secret("a long random string, the same in every process")
///     .connect_timeout(Duration::from_secs(30))
///     .max_epochs_ahead(4);
/// assert_eq!((config.workers(), config.index()), (6, 1));
/// ```
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub(crate) threads: usize,
    pub(crate) index: usize,
    /// One `host:port` per process; empty for a single process without network.
    pub(crate) hosts: Vec<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) peer_timeout: Duration,
    pub(crate) epochs_ahead: u64,
    pub(crate) epoch_events: usize,
    pub(crate) secret: Option<Secret>,
    pub(crate) handshake_timeout: Duration,
}

/// The cluster's shared secret, kept only as the key derived from it (never printed).
#[derive(Clone)]
pub(crate) struct Secret {
    key: [u8; 32],
    empty: bool,
}

impl Secret {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Secret {
            key: blake3::derive_key("flowstage cluster handshake v1", secret),
            empty: secret.is_empty(),
        }
    }

    pub(crate) fn key(&self) -> [u8; 32] {
        self.key
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Environment variables read by [`ClusterConfig::from_env`].
pub const ENV_INDEX: &str = "FLOWSTAGE_CLUSTER_INDEX";
/// The processes' addresses, comma-separated (see [`ClusterConfig::from_env`]).
pub const ENV_HOSTS: &str = "FLOWSTAGE_CLUSTER_HOSTS";
/// A host file: one `host:port` per line (see [`ClusterConfig::from_env`]).
pub const ENV_HOSTFILE: &str = "FLOWSTAGE_CLUSTER_HOSTFILE";
/// Worker threads per process (see [`ClusterConfig::from_env`]).
pub const ENV_THREADS: &str = "FLOWSTAGE_CLUSTER_THREADS";
/// The cluster's shared secret (see [`ClusterConfig::secret`] and
/// [`ClusterConfig::from_env`]).
pub const ENV_SECRET: &str = "FLOWSTAGE_CLUSTER_SECRET";

impl ClusterConfig {
    fn new(threads: usize, index: usize, hosts: Vec<String>) -> Self {
        ClusterConfig {
            threads,
            index,
            hosts,
            connect_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(2),
            epochs_ahead: 8,
            epoch_events: 4096,
            secret: None,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// One process with `threads` workers, no network.
    pub fn local(threads: usize) -> Self {
        ClusterConfig::new(threads, 0, Vec::new())
    }

    /// Process `index` of the processes at `hosts` (`host:port`, in process order, the
    /// same list in every process), one worker thread each until [`threads`](Self::threads).
    pub fn process<S: Into<String>>(index: usize, hosts: impl IntoIterator<Item = S>) -> Self {
        ClusterConfig::new(1, index, hosts.into_iter().map(Into::into).collect())
    }

    /// Process `index` of the processes listed in the host file at `path`: one
    /// `host:port` per line, in process order; blank lines and `#` comments are skipped.
    ///
    /// ```
    /// use flowstage::cluster::ClusterConfig;
    /// let path = std::env::temp_dir().join(format!("flowstage-doc-hosts-{}", std::process::id()));
    /// std::fs::write(&path, "# two processes\n127.0.0.1:7000\n127.0.0.1:7001\n")?;
    /// let config = ClusterConfig::from_hostfile(1, &path)?;
    /// assert_eq!(config.hosts(), ["127.0.0.1:7000", "127.0.0.1:7001"]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_hostfile(index: usize, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| FlowError::io(crate::IoOperation::Read, path, source))?;
        let hosts = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        Ok(ClusterConfig::process(index, hosts))
    }

    /// The configuration from the environment: [`ENV_INDEX`] (this process, default 0),
    /// [`ENV_HOSTS`] (comma-separated `host:port`s) or [`ENV_HOSTFILE`] (a host file, see
    /// [`from_hostfile`](Self::from_hostfile)), [`ENV_THREADS`] (default 1) and
    /// [`ENV_SECRET`] (the shared [`secret`](Self::secret)). Without hosts: one process.
    ///
    /// ```
    /// use flowstage::cluster::ClusterConfig;
    /// // With none of the variables set: one process, one worker.
    /// # for var in ["FLOWSTAGE_CLUSTER_INDEX", "FLOWSTAGE_CLUSTER_HOSTS", "FLOWSTAGE_CLUSTER_HOSTFILE", "FLOWSTAGE_CLUSTER_THREADS", "FLOWSTAGE_CLUSTER_SECRET"] {
    /// #     assert!(std::env::var_os(var).is_none());
    /// # }
    /// let config = ClusterConfig::from_env()?;
    /// assert_eq!((config.processes(), config.workers()), (1, 1));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_env() -> Result<Self> {
        let number = |var: &str, default: usize| -> Result<usize> {
            match std::env::var(var) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .map_err(|_| FlowError::Config(format!("{var}: not a number: {text:?}"))),
                Err(_) => Ok(default),
            }
        };
        let index = number(ENV_INDEX, 0)?;
        let threads = number(ENV_THREADS, 1)?;
        let config = if let Ok(hosts) = std::env::var(ENV_HOSTS) {
            ClusterConfig::process(
                index,
                hosts.split(',').map(str::trim).filter(|h| !h.is_empty()),
            )
        } else if let Some(path) = std::env::var_os(ENV_HOSTFILE) {
            ClusterConfig::from_hostfile(index, path)?
        } else {
            let mut config = ClusterConfig::local(threads);
            config.index = index;
            config
        };
        let config = config.threads(threads);
        Ok(match std::env::var_os(ENV_SECRET) {
            Some(secret) => config.secret(secret.as_encoded_bytes()),
            None => config,
        })
    }

    /// Worker threads per process (default 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// How long to wait for every process to connect before giving up with
    /// [`FlowError::Cluster`] (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a run may go on after a peer closed its connection cleanly (it finished
    /// or failed) before this process gives up with [`FlowError::Cluster`] (default 2 s).
    /// A peer that dies is reported at once.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// The cluster's shared secret. Every connection between two processes starts with a
    /// challenge–response handshake in which both prove they hold it (keyed BLAKE3 over
    /// fresh nonces from both sides; the secret itself never crosses the network), so
    /// knowing the host list is not enough to join a cluster. Required for a run of
    /// several processes; every process must have the same. Use a long random string
    /// (`openssl rand -hex 32`), kept like a password; see the
    /// [module docs](crate::cluster#security) for what it does not protect.
    ///
    /// ```
    /// use flowstage::cluster::ClusterConfig;
    /// let config = ClusterConfig::process(0, ["10.0.0.1:7000", "10.0.0.2:7000"])
    ///     .secret("3f1c…a long random string");
    /// // Never printed:
    /// assert!(!format!("{config:?}").contains("3f1c"));
    /// ```
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(Secret::new(secret.as_ref()));
        self
    }

    /// How long a connection may take to complete its handshake (default 5 s): a
    /// connection that stays silent longer is dropped, and accepting goes on meanwhile.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Backpressure: how many epochs a source may run ahead of the slowest part of the
    /// cluster (default 8). An epoch is at most [`epoch_events`](Self::epoch_events)
    /// events read by one source; see the [module docs](crate::cluster#backpressure).
    pub fn max_epochs_ahead(mut self, epochs: u64) -> Self {
        self.epochs_ahead = epochs;
        self
    }

    /// Events a source reads per epoch (default 4096; at least 1). Each epoch costs
    /// progress messages between all processes; fewer, larger epochs cost less network
    /// time, more events in flight (see the [module docs](crate::cluster#backpressure)).
    /// A source of large items (a file's blocks) answers with fewer than asked.
    pub fn epoch_events(mut self, events: usize) -> Self {
        self.epoch_events = events;
        self
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.hosts.len().max(1)
    }

    /// This process's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The processes' addresses (empty for one process without network).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Workers over all processes: the number of partitions of every `partition`.
    pub fn workers(&self) -> usize {
        self.threads * self.processes()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.threads == 0 {
            return Err(FlowError::Config(
                "a cluster process needs at least 1 worker thread".into(),
            ));
        }
        if self.epoch_events == 0 {
            return Err(FlowError::Config(
                "a cluster epoch needs at least 1 event".into(),
            ));
        }
        if self.hosts.len() > 1 {
            match &self.secret {
                None => {
                    return Err(FlowError::Config(format!(
                        "a cluster of {} processes needs a shared secret: set \
                         ClusterConfig::secret or {ENV_SECRET}, the same in every process",
                        self.hosts.len()
                    )));
                }
                Some(secret) if secret.empty => {
                    return Err(FlowError::Config(
                        "the cluster's shared secret is empty".into(),
                    ));
                }
                Some(_) => {}
            }
        }
        if self.index >= self.processes() {
            return Err(FlowError::Config(format!(
                "process index {} out of range for {} processes",
                self.index,
                self.processes()
            )));
        }
        Ok(())
    }
}
