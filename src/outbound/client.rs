//! The guarded HTTP client every outbound request goes through: names are
//! resolved once by our own resolver, every address is checked against the
//! policy, and the connection goes only to those checked addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::{Host, Url};

use super::{OutboundAllow, Refused};

/// Most redirects an `http` job follows (each one checked like the first URL).
pub const MAX_REDIRECTS: usize = 5;

/// Turns a host name into addresses. The system resolver in production; tests
/// and library users may supply their own (e.g. a name that resolves to
/// loopback, to prove the guard checks resolved addresses).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// A fixed table of names; unknown names do not resolve.
#[derive(Clone, Debug, Default)]
pub struct StaticLookup(HashMap<String, Vec<IpAddr>>);

impl StaticLookup {
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        Self(
            entries
                .into_iter()
                .map(|(name, addrs)| (name.to_ascii_lowercase(), addrs))
                .collect(),
        )
    }
}

impl Lookup for StaticLookup {
    fn lookup(&self, host: String) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let found = self.0.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            found.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} does not resolve"),
                )
            })
        })
    }
}

/// Why an outbound request may not be made.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error("`{0}` may not be reached: only http and https URLs with a host are")]
    BadUrl(String),
    #[error(
        "{0} is a loopback name; outbound requests may not reach it (SPOOL_OUTBOUND_ALLOW opens it)"
    )]
    LoopbackName(String),
    #[error("cannot build the outbound HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Resolves with the configured [`Lookup`] and lets reqwest connect only to
/// addresses the policy accepts. Every address must pass: a name that
/// resolves to one public and one private address is refused, since the
/// connection could go to either.
struct GuardedResolver {
    allow: Arc<OutboundAllow>,
    lookup: Arc<dyn Lookup>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow = self.allow.clone();
        let lookup = self.lookup.lookup(host.clone());
        Box::pin(async move {
            let addresses = lookup.await?;
            if addresses.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            for address in &addresses {
                allow.check(&host, *address)?;
            }
            // Port 0: reqwest puts the URL's port in.
            let addrs: Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

/// The two guarded clients (for `http` jobs, which follow checked
/// redirects, and for webhooks, which follow none) and the policy.
#[derive(Clone)]
pub struct Outbound {
    allow: Arc<OutboundAllow>,
    http: reqwest::Client,
    webhooks: reqwest::Client,
}

impl Outbound {
    pub fn new(allow: OutboundAllow, lookup: Arc<dyn Lookup>) -> Result<Self, OutboundError> {
        let allow = Arc::new(allow);
        let build = |policy: redirect::Policy| {
            reqwest::Client::builder()
                // A proxy would make the connection somewhere we never checked.
                .no_proxy()
                .redirect(policy)
                .dns_resolver(Arc::new(GuardedResolver {
                    allow: allow.clone(),
                    lookup: lookup.clone(),
                }))
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("spool/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        let redirect_allow = allow.clone();
        let follow_checked = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check_url(&redirect_allow, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        Ok(Self {
            http: build(follow_checked)?,
            webhooks: build(redirect::Policy::none())?,
            allow,
        })
    }

    /// The client of `http` jobs: follows up to [`MAX_REDIRECTS`] redirects,
    /// each checked like the first URL.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The client of webhook deliveries: never follows a redirect (a 3xx
    /// answer is a failed delivery, as Standard Webhooks receivers expect).
    pub fn webhook_client(&self) -> &reqwest::Client {
        &self.webhooks
    }

    /// What can be checked before any lookup: the scheme, IP-literal hosts
    /// (in every form the URL parser accepts, e.g. `http://2130706433/`) and
    /// loopback names. Names are checked on their resolved addresses when
    /// the request is made.
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        check_url(&self.allow, url)
    }

    /// The refused destination behind a failed request, if that is why it failed.
    pub fn refused(error: &reqwest::Error) -> Option<String> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = source {
            if let Some(refused) = error.downcast_ref::<Refused>() {
                return Some(refused.to_string());
            }
            if let Some(refused) = error.downcast_ref::<OutboundError>() {
                return Some(refused.to_string());
            }
            source = error.source();
        }
        None
    }
}

fn check_url(allow: &OutboundAllow, url: &Url) -> Result<(), OutboundError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OutboundError::BadUrl(url.to_string()));
    }
    match url.host() {
        None => Err(OutboundError::BadUrl(url.to_string())),
        Some(Host::Ipv4(ip)) => Ok(allow.check(&ip.to_string(), IpAddr::V4(ip))?),
        Some(Host::Ipv6(ip)) => Ok(allow.check(&ip.to_string(), IpAddr::V6(ip))?),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let loopback = name == "localhost" || name.ends_with(".localhost");
            if loopback && !allow.allows_host(&name) {
                return Err(OutboundError::LoopbackName(name));
            }
            Ok(())
        }
    }
}
