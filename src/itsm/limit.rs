//! How hard itsmc may press one ITSM connection: at most `max_concurrent` requests in flight, at most
//! `max_per_second` started per second when set, and nothing at all while the tool has asked for a pause
//! (a 429's `Retry-After` stops the whole connection, not only the request that got it: every request
//! shares the instance's limit, so the others would only collect 429s of their own).
//!
//! Without a rate of its own, a connection learns one from the tool: at a 429 it paces itself at a little
//! under the number of requests the tool took in the second before, and speeds up again by a tenth every
//! 10 s without a 429. A tool that refuses in whole seconds (`Retry-After: 1`) would otherwise cost a second's
//! pause at every refusal, and a storm would run at about half the tool's rate.
//!
//! Every product client sends its work requests through its connection's [`Limiter`]. Work that has time
//! (the outbox, the sync) waits its turn, and a 429 is waited out and sent again. The alert route's own
//! attempt runs inside [`inline`]: it must answer the action group within a second, so rather than queue
//! behind a busy connection it gives up, and the delivery goes to the outbox (answered 202). It starts only
//! when the connection has room at that moment; once its first request went, the rest of the attempt may wait
//! a little for room, because giving up then would waste the requests already sent (a lookup with no create).

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::ItsmError;

/// A connection's limits, from its settings (`ITSMC_MAX_CONCURRENT_REQUESTS`, `ITSMC_MAX_REQUESTS_PER_SECOND`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_concurrent: usize,
    /// `None`: no pacing of our own; the tool's 429s still pause the connection.
    pub max_per_second: Option<f64>,
}

impl Default for Limits {
    /// 64 in flight: an instance answering in 300 ms can then be sent about 200 requests a second, twice
    /// what the busiest instance's rate limit is likely to allow, so the limit that paces a storm is the
    /// instance's own, not this one. No rate of our own by default: instances' limits differ by orders of
    /// magnitude, and their 429s say where each one is.
    fn default() -> Self {
        Limits { max_concurrent: 64, max_per_second: None }
    }
}

/// How long the alert route's attempt, once started, waits for the connection before leaving the rest to the
/// outbox: with a lookup and a create of 300 ms each, a webhook still answers well within a second.
const INLINE_PATIENCE: Duration = Duration::from_millis(150);

/// The longest `Retry-After` a waiting request sits out before it hands the failure to the outbox, whose
/// backoff then honours it without holding a lease and a place in the queue for that long.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// When the tool says 429 without `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Who is sending; outside any scope, work that has time (the outbox, the sync).
    static SCOPE: Scope;
}

enum Scope {
    /// The alert route's own attempt, and whether a request of it has been sent yet.
    Webhook(Cell<bool>),
    /// A connection test: it waits its turn like any work, but reports a 429 instead of waiting it out.
    Probe,
}

/// Runs `work` as the alert route's own attempt: its requests never wait long for the connection.
pub async fn inline<F: Future>(work: F) -> F::Output {
    SCOPE.scope(Scope::Webhook(Cell::new(false)), work).await
}

/// Runs `work` as a connection test, which must see the tool's 429 to report it.
pub async fn probe<F: Future>(work: F) -> F::Output {
    SCOPE.scope(Scope::Probe, work).await
}

/// Whether the running task is the alert route's own attempt.
pub fn is_inline() -> bool {
    SCOPE.try_with(|scope| matches!(scope, Scope::Webhook(_))).unwrap_or(false)
}

/// How long a request may wait for the connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Patience {
    /// The outbox and the sync: as long as it takes.
    Unbounded,
    /// Not at all: the first request of the alert route's attempt.
    None,
    /// Until then: a later request of the alert route's attempt.
    Until(Instant),
}

fn patience() -> Patience {
    let started = SCOPE.try_with(|scope| match scope {
        Scope::Webhook(started) => Some(started.replace(true)),
        Scope::Probe => None,
    });
    match started {
        Ok(Some(false)) => Patience::None,
        Ok(Some(true)) => Patience::Until(Instant::now() + INLINE_PATIENCE),
        _ => Patience::Unbounded,
    }
}

/// Whether a 429 is waited out and the request sent again.
fn waits_out_429s() -> bool {
    SCOPE.try_with(|_| ()).is_err()
}

pub struct Limiter {
    permits: Semaphore,
    interval: Option<Duration>,
    schedule: Mutex<Schedule>,
}

struct Schedule {
    /// The earliest a request may start under the rate.
    next_start: Instant,
    /// Until when the tool asked us to send nothing.
    paused_until: Instant,
    /// Without `max_per_second`: the pace learned from the tool's 429s, and when it last changed.
    learned: Option<(Duration, Instant)>,
    /// When the tool took each request of the last second.
    taken: VecDeque<Instant>,
}

/// Of the requests the tool took in the second before a 429, the share a learned pace keeps to.
const LEARNED_SHARE: f64 = 0.95;
/// How long a learned pace holds before it speeds up by `SPEED_UP`.
const RELEARN: Duration = Duration::from_secs(10);
const SPEED_UP: f64 = 1.1;

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        let now = Instant::now();
        Limiter {
            permits: Semaphore::new(limits.max_concurrent.max(1)),
            interval: limits.max_per_second.filter(|rate| *rate > 0.0).map(|rate| Duration::from_secs_f64(1.0 / rate)),
            schedule: Mutex::new(Schedule {
                next_start: now,
                paused_until: now,
                learned: None,
                taken: VecDeque::new(),
            }),
        }
    }

    /// Sends `request` when the limits allow, waiting out 429s (see the module comment). `failed` says what a
    /// transport error means to the caller's product; a refusal to wait is an [`ItsmError::Transient`].
    pub async fn send<E: From<ItsmError>>(
        &self,
        request: reqwest::RequestBuilder,
        failed: impl Fn(reqwest::Error) -> E,
    ) -> Result<reqwest::Response, E> {
        let patience = patience();
        let waits = waits_out_429s();
        let mut request = request;
        loop {
            let permit = self.admit(patience).await?;
            // A body that cannot be cloned (a stream) is sent once, 429 or not.
            let again = request.try_clone();
            let response = request.send().await.map_err(&failed)?;
            drop(permit);
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                if self.interval.is_none() {
                    self.taken();
                }
                return Ok(response);
            }
            let pause = crate::http::retry_after(response.headers()).unwrap_or(DEFAULT_PAUSE);
            self.pause(pause);
            match again {
                Some(next) if waits && pause <= LONGEST_WAIT => request = next,
                _ => return Ok(response),
            }
        }
    }

    fn taken(&self) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        schedule.taken.push_back(now);
        while schedule.taken.front().is_some_and(|at| now.duration_since(*at) > Duration::from_secs(1)) {
            schedule.taken.pop_front();
        }
    }

    fn pause(&self, pause: Duration) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let until = now + pause;
        if self.interval.is_none() {
            let recent = schedule.taken.iter().filter(|at| now.duration_since(**at) <= Duration::from_secs(1)).count();
            let pace = Duration::from_secs_f64(1.0 / (recent as f64 * LEARNED_SHARE).max(1.0));
            // Only ever slower at a 429: requests refused together all saw the same second.
            if schedule.learned.is_none_or(|(learned, _)| pace > learned) {
                tracing::info!(
                    requests_per_second = 1.0 / pace.as_secs_f64(),
                    "the ITSM tool's rate, as learned from a 429"
                );
                schedule.learned = Some((pace, now));
            }
        }
        if until > schedule.paused_until {
            tracing::info!(
                pause_ms = pause.as_millis() as u64,
                "the ITSM tool asked for a pause (429): the connection waits"
            );
            schedule.paused_until = until;
        }
    }

    /// A place among the requests in flight and, under a rate, a start time; waited for as `patience` allows.
    async fn admit(&self, patience: Patience) -> Result<SemaphorePermit<'_>, ItsmError> {
        let full = || busy("every request this connection may have in flight is taken", None);
        let permit = match patience {
            Patience::Unbounded => self.permits.acquire().await.map_err(|_| full())?,
            Patience::None => self.permits.try_acquire().map_err(|_| full())?,
            Patience::Until(deadline) => match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(full()),
            },
        };
        loop {
            let start = {
                let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if schedule.paused_until > now {
                    Err(schedule.paused_until)
                } else {
                    let start = schedule.next_start.max(now);
                    let latest = match patience {
                        Patience::Unbounded => start,
                        Patience::None => now,
                        Patience::Until(deadline) => deadline,
                    };
                    if start > latest {
                        return Err(busy("the connection's request rate is used up", Some(start - now)));
                    }
                    if let Some(interval) = self.interval.or_else(|| schedule.learned_pace(now)) {
                        schedule.next_start = start + interval;
                    }
                    Ok(start)
                }
            };
            match start {
                Ok(start) => {
                    tokio::time::sleep_until(start).await;
                    return Ok(permit);
                }
                Err(paused_until) if patience != Patience::Unbounded => {
                    let wait = paused_until - Instant::now();
                    return Err(busy("the ITSM tool asked for a pause (429)", Some(wait)));
                }
                // Looked at again after the pause: another 429 may have made it longer.
                Err(paused_until) => tokio::time::sleep_until(paused_until).await,
            }
        }
    }
}

impl Schedule {
    /// The learned pace, sped up for every `RELEARN` without a 429.
    fn learned_pace(&mut self, now: Instant) -> Option<Duration> {
        let (pace, since) = self.learned.as_mut()?;
        if now.duration_since(*since) >= RELEARN {
            *pace = pace.div_f64(SPEED_UP);
            *since = now;
        }
        Some(*pace)
    }
}

fn busy(why: &str, retry_after: Option<Duration>) -> ItsmError {
    ItsmError::Busy { message: format!("queued: {why}"), retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(ms: u64) -> Patience {
        Patience::Until(Instant::now() + Duration::from_millis(ms))
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_the_starts_and_inline_work_does_not_wait_for_them() {
        let limiter = Limiter::new(Limits { max_concurrent: 8, max_per_second: Some(10.0) });
        let begun = Instant::now();
        for _ in 0..5 {
            drop(limiter.admit(Patience::Unbounded).await.unwrap());
        }
        // Five starts at 10 a second: the fifth at 400 ms.
        assert_eq!(begun.elapsed(), Duration::from_millis(400));
        let refused = limiter.admit(Patience::None).await.map(drop);
        assert!(matches!(refused, Err(ItsmError::Busy { retry_after: Some(_), .. })), "{refused:?}");
        // A later request of a started attempt may wait for the next start, 100 ms away.
        let begun = Instant::now();
        assert!(limiter.admit(later(150)).await.is_ok());
        assert_eq!(begun.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_and_refuses_inline_ones() {
        let limiter = Limiter::new(Limits::default());
        limiter.pause(Duration::from_secs(3));
        for patience in [Patience::None, later(150)] {
            let refused = limiter.admit(patience).await.map(drop);
            assert!(
                matches!(&refused, Err(ItsmError::Busy { retry_after: Some(wait), .. }) if *wait == Duration::from_secs(3)),
                "{refused:?}"
            );
        }
        let begun = Instant::now();
        drop(limiter.admit(Patience::Unbounded).await.unwrap());
        assert_eq!(begun.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_starts_only_with_room_and_then_waits_a_moment_for_more() {
        let limiter = Limiter::new(Limits { max_concurrent: 1, max_per_second: None });
        let held = limiter.admit(Patience::Unbounded).await.unwrap();
        assert!(limiter.admit(Patience::None).await.is_err());
        let begun = Instant::now();
        assert!(limiter.admit(later(150)).await.is_err());
        assert_eq!(begun.elapsed(), Duration::from_millis(150));
        drop(held);
        assert!(limiter.admit(Patience::None).await.is_ok());
    }

    #[tokio::test]
    async fn the_first_request_of_an_attempt_is_told_apart_from_the_rest() {
        assert_eq!(patience(), Patience::Unbounded);
        assert!(waits_out_429s());
        inline(async {
            assert_eq!(patience(), Patience::None);
            assert!(matches!(patience(), Patience::Until(_)));
            assert!(!waits_out_429s());
        })
        .await;
        probe(async {
            assert_eq!(patience(), Patience::Unbounded);
            assert!(!waits_out_429s());
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_a_429_teaches_one_that_speeds_up_later() {
        let limiter = Limiter::new(Limits::default());
        for _ in 0..20 {
            drop(limiter.admit(Patience::Unbounded).await.unwrap());
            limiter.taken();
        }
        limiter.pause(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 20 taken in the second before: 19 a second from now on.
        let begun = Instant::now();
        for _ in 0..20 {
            drop(limiter.admit(Patience::Unbounded).await.unwrap());
        }
        let pace = Duration::from_secs_f64(1.0 / 19.0);
        assert!(begun.elapsed() >= pace * 19 && begun.elapsed() <= pace * 20, "{:?}", begun.elapsed());
        tokio::time::sleep(RELEARN).await;
        let begun = Instant::now();
        for _ in 0..20 {
            drop(limiter.admit(Patience::Unbounded).await.unwrap());
        }
        assert!(begun.elapsed() < pace * 19, "a tenth faster after 10 s: {:?}", begun.elapsed());
    }
}
