//! [`ClientOptions`]: timeouts, retry limits and address discovery of a
//! [`Client`](crate::Client).

use std::time::Duration;

use crate::retry::RetryLimits;

/// Timeouts, retry limits and address discovery of a [`Client`](crate::Client).
///
/// Built from [`ClientOptions::default()`] with the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use routemq_client::ClientOptions;
///
/// let options = ClientOptions::default()
///     .with_total_timeout(Duration::from_secs(3))
///     .with_discover_members(false);
/// assert_eq!(options.total_timeout, Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Longest wait for a TCP connection to one node. Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for one node's answer to one attempt. Default 3 s.
    pub request_timeout: Duration,
    /// Budget of a whole call, retries and backoffs included. Default 10 s.
    pub total_timeout: Duration,
    /// Most attempts of one call, across all nodes. Default 20.
    pub max_attempts: u32,
    /// First pause after every known node failed once; doubles per round. Default 50 ms.
    pub initial_backoff: Duration,
    /// Longest pause between rounds. Default 1 s.
    pub max_backoff: Duration,
    /// Whether to add the members' gRPC addresses from status responses to the addresses
    /// tried. Default true; with false the client only uses its seeds and leader hints.
    pub discover_members: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(10),
            max_attempts: 20,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            discover_members: true,
        }
    }
}

impl ClientOptions {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`total_timeout`](Self::total_timeout).
    pub fn with_total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff) and [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets [`discover_members`](Self::discover_members).
    pub fn with_discover_members(mut self, discover: bool) -> Self {
        self.discover_members = discover;
        self
    }

    pub(crate) fn retry_limits(&self) -> RetryLimits {
        RetryLimits {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff.max(self.initial_backoff),
        }
    }
}
