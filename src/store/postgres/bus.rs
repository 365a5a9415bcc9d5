//! The bus between instances on PostgreSQL: `NOTIFY` to send, `LISTEN` to hear.
//!
//! Messages queue in memory and go out packed into as few `NOTIFY`s as fit
//! (one per round trip under load), so a burst of wake-ups costs one
//! statement, not one each. Each packet names its sender, which skips its
//! own. A listener whose connection drops reconnects and reports
//! [`Heard::Resync`]: notifications sent meanwhile are gone for good.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{Bus, Heard, MAX_BUS_MESSAGE, StoreError};

/// PostgreSQL refuses NOTIFY payloads of 8 000 bytes or more.
const MAX_PACKET: usize = 7_900;
/// Messages waiting to go out before new ones are dropped (receivers
/// re-check on a timer, so a drop delays, never loses, what they learn).
const OUTBOX: usize = 16_384;
/// Heard messages an engine may fall behind by before it resyncs.
const HEARD_BUFFER: usize = 4_096;
/// Longest pause between attempts to listen again after losing the connection.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

enum Outgoing {
    Message(String),
    Flush(oneshot::Sender<()>),
}

pub struct PgBus {
    outbox: mpsc::Sender<Outgoing>,
    heard: broadcast::Sender<Heard>,
    stop: CancellationToken,
    /// Stops the listener when the bus is dropped (the sender stops when
    /// the outbox closes).
    _stop_on_drop: DropGuard,
}

impl PgBus {
    /// Listens on `channel` (one per schema, so separate services sharing a
    /// database never hear each other) and starts sending on it.
    pub async fn start(pool: PgPool, channel: String) -> Result<Arc<Self>, StoreError> {
        let listener = listen(&pool, &channel).await?;
        let sender_id = uuid::Uuid::now_v7().simple().to_string();
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let heard = broadcast::channel(HEARD_BUFFER).0;
        let stop = CancellationToken::new();
        tokio::spawn(send_loop(
            pool.clone(),
            channel.clone(),
            sender_id.clone(),
            outgoing,
        ));
        tokio::spawn(listen_loop(
            pool,
            channel,
            sender_id,
            listener,
            heard.clone(),
            stop.clone(),
        ));
        Ok(Arc::new(Self {
            outbox,
            heard,
            stop: stop.clone(),
            _stop_on_drop: stop.drop_guard(),
        }))
    }

    /// Stops listening, giving the listener's connection back to the pool
    /// (which cannot close while it is held).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Bus for PgBus {
    fn send(&self, message: String) {
        if message.len() > MAX_BUS_MESSAGE {
            tracing::warn!(bytes = message.len(), "bus message too large; dropped");
            return;
        }
        if self.outbox.try_send(Outgoing::Message(message)).is_err() {
            tracing::debug!("bus outbox full; message dropped");
        }
    }

    async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.outbox.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.heard.subscribe()
    }
}

/// The channel of the service in `schema`: its name when that fits in an
/// identifier (63 bytes), else a digest of it.
pub fn channel_for(schema: &str) -> String {
    let channel = format!("spool:{schema}");
    if channel.len() <= 63 {
        return channel;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("spool:{hex}")
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Packs waiting messages into packets (`<sender>\n<message>\n<message>…`;
/// messages are single-line JSON) and sends each with one `pg_notify`.
async fn send_loop(
    pool: PgPool,
    channel: String,
    sender_id: String,
    mut outgoing: mpsc::Receiver<Outgoing>,
) {
    let mut flushes = Vec::new();
    // Identical messages in one packet say nothing more (a burst of
    // submissions is one "ready" per queue).
    let mut in_packet: HashSet<String> = HashSet::new();
    while let Some(first) = outgoing.recv().await {
        let mut packet = sender_id.clone();
        in_packet.clear();
        let mut pending = Some(first);
        loop {
            let next = match pending.take() {
                Some(next) => next,
                None => match outgoing.try_recv() {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Outgoing::Flush(done) => flushes.push(done),
                Outgoing::Message(message) => {
                    if in_packet.contains(&message) {
                        continue;
                    }
                    if packet.len() + 1 + message.len() > MAX_PACKET {
                        notify(&pool, &channel, &packet).await;
                        packet.clone_from(&sender_id);
                        in_packet.clear();
                    }
                    packet.push('\n');
                    packet.push_str(&message);
                    in_packet.insert(message);
                }
            }
        }
        if packet.len() > sender_id.len() {
            notify(&pool, &channel, &packet).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn notify(pool: &PgPool, channel: &str, packet: &str) {
    if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(packet)
        .execute(pool)
        .await
    {
        // Receivers re-check on their own; one warning per failed packet.
        tracing::warn!(%error, "sending on the bus failed; other instances learn on their next check");
    }
}

async fn listen_loop(
    pool: PgPool,
    channel: String,
    sender_id: String,
    mut listener: PgListener,
    heard: broadcast::Sender<Heard>,
    stop: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let received = tokio::select! {
            received = listener.try_recv() => received,
            _ = stop.cancelled() => return,
        };
        match received {
            Ok(Some(notification)) => {
                pause = Duration::from_millis(100);
                let mut lines = notification.payload().split('\n');
                if lines.next() == Some(sender_id.as_str()) {
                    continue;
                }
                for line in lines {
                    let _ = heard.send(Heard::Message(line.to_owned()));
                }
            }
            // Reconnected (sqlx listens again by itself); what was sent in
            // between is lost.
            Ok(None) => {
                tracing::warn!("the bus connection was lost and re-established");
                let _ = heard.send(Heard::Resync);
            }
            Err(error) => {
                tracing::warn!(%error, "the bus connection failed; listening again");
                // Its connection goes back to the pool now, not when a new
                // one is found: a closing pool waits for every connection.
                drop(listener);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return,
                    }
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                    match listen(&pool, &channel).await {
                        Ok(fresh) => {
                            listener = fresh;
                            let _ = heard.send(Heard::Resync);
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "listening again failed; will retry");
                        }
                    }
                }
            }
        }
    }
}
