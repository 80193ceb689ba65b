//! A [`TokenCache`] shared by every request of a server or a sidecar, with the asking done here:
//! one question per token at a time. Concurrent requests carrying the same token that the cache
//! cannot answer wait for one answer (Consul's resolver groups them the same way), and async-cache
//! refreshes a stale token once, however many requests use it meanwhile. The question itself
//! (`ask`) is the caller's: a sidecar asks its servers, a secondary's server the primary.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::token_cache::{DownPolicy, Fetched, Lookup, TokenCache};
use super::EffectiveRules;

/// One question under way: its settled answer, for everyone waiting.
type Flight = Shared<BoxFuture<'static, Result<EffectiveRules, String>>>;

#[derive(Debug)]
pub struct Resolver {
    cache: Mutex<TokenCache>,
    in_flight: Mutex<HashMap<Option<String>, Flight>>,
    /// What a token never resolved gets while its owner cannot be asked (extend-cache, async-cache).
    default_allow: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Resolver {
    pub fn new(cache: TokenCache, default_allow: bool) -> Arc<Self> {
        Arc::new(Resolver { cache: Mutex::new(cache), in_flight: Mutex::default(), default_allow })
    }

    pub fn down_policy(&self) -> DownPolicy {
        lock(&self.cache).down_policy()
    }

    /// A number that moves whenever any answer is settled, while `token`'s answer is fresh (None:
    /// due to be asked again): whatever was derived from the answers stays valid while it holds.
    pub fn fresh_generation(&self, token: &Option<String>) -> Option<u64> {
        lock(&self.cache).fresh_generation(token, Instant::now())
    }

    /// The last answer for `token`, however old (handlers resolving synchronously after `resolve`).
    pub fn current(&self, token: &Option<String>) -> Option<EffectiveRules> {
        lock(&self.cache).current(token)
    }

    /// What `token` may do: from the cache, or asked with `ask` (at most one question per token at a
    /// time, its answer shared by everyone waiting); Err is the owner's refusal, or the down
    /// policy's while the owner cannot be asked. Under async-cache a stale entry answers at once and
    /// is refreshed behind. The question runs to its end even if every request waiting for it goes.
    pub async fn resolve<F, Fut>(self: &Arc<Self>, token: Option<String>, ask: F) -> Result<EffectiveRules, String>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: Future<Output = Fetched> + Send + 'static,
    {
        let lookup = lock(&self.cache).lookup(&token, Instant::now());
        match lookup {
            Lookup::Fresh(rules) => Ok(rules),
            Lookup::RefreshBehind(rules) => {
                drop(self.flight(token, ask));
                Ok(rules)
            }
            Lookup::Fetch => self.flight(token, ask).await,
        }
    }

    /// The question under way for `token`, or a new one.
    fn flight<F, Fut>(self: &Arc<Self>, token: Option<String>, ask: F) -> Flight
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: Future<Output = Fetched> + Send + 'static,
    {
        let mut flights = lock(&self.in_flight);
        if let Some(flight) = flights.get(&token) {
            return flight.clone();
        }
        let question = ask(token.clone());
        let (me, key) = (self.clone(), token.clone());
        // Spawned: the answer is settled even when every waiting request is dropped. It leaves the
        // map after settling, or however the task ends (a guard), under the map's lock (held here
        // until the entry is in).
        let task = tokio::spawn(async move {
            let _leave = Landed { resolver: me.clone(), token: key.clone() };
            let fetched = question.await;
            lock(&me.cache).settle(&key, fetched, me.default_allow, Instant::now())
        });
        let flight = async move { task.await.unwrap_or_else(|e| Err(format!("resolving the token failed: {e}"))) }
            .boxed()
            .shared();
        flights.insert(token, flight.clone());
        flight
    }
}

/// Takes a question out of the map when its task ends, settled or not (a panic, a cancelled
/// runtime), so the token is asked again next time instead of failing for good.
struct Landed {
    resolver: Arc<Resolver>,
    token: Option<String>,
}

impl Drop for Landed {
    fn drop(&mut self) {
        lock(&self.resolver.in_flight).remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn rules(management: bool) -> EffectiveRules {
        EffectiveRules { management, ..Default::default() }
    }

    /// An owner that answers `answer` after 50 ms and counts the questions.
    fn owner(asked: &Arc<AtomicUsize>, answer: Fetched) -> impl FnOnce(Option<String>) -> BoxFuture<'static, Fetched> {
        let asked = asked.clone();
        move |_| {
            asked.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer
            }
            .boxed()
        }
    }

    /// Waits (at most 5 s) for `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_unknown_token_ask_once() {
        let r = Resolver::new(TokenCache::new(Duration::from_secs(30), DownPolicy::ExtendCache), false);
        let asked = Arc::new(AtomicUsize::new(0));
        let waits = (0..20).map(|_| r.resolve(Some("t".into()), owner(&asked, Fetched::Found(rules(true)))));
        let answers = futures::future::join_all(waits).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one question for twenty requests");
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|r| r.management)), "{answers:?}");
        // Then the cache answers; another token is its own question.
        r.resolve(Some("t".into()), owner(&asked, Fetched::Refused("no".into()))).await.expect("cached");
        let other = r.resolve(Some("u".into()), owner(&asked, Fetched::Refused("ACL not found".into()))).await;
        assert_eq!(other, Err("ACL not found".into()));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_question_that_fails_outright_is_asked_again_next_time() {
        let r = Resolver::new(TokenCache::new(Duration::from_secs(30), DownPolicy::ExtendCache), false);
        fn broken(_: Option<String>) -> BoxFuture<'static, Fetched> {
            async { panic!("the question broke") }.boxed()
        }
        let first = r.resolve(Some("t".into()), broken).await;
        assert!(first.is_err_and(|e| e.contains("resolving the token failed")));
        let asked = Arc::new(AtomicUsize::new(0));
        let again = r.resolve(Some("t".into()), owner(&asked, Fetched::Found(rules(true)))).await;
        assert_eq!(again, Ok(rules(true)), "not stuck with the failure");
    }

    #[tokio::test]
    async fn a_question_survives_its_requests_and_async_cache_refreshes_once() {
        let r = Resolver::new(TokenCache::new(Duration::from_millis(1), DownPolicy::AsyncCache), false);
        let asked = Arc::new(AtomicUsize::new(0));
        // The only request waiting goes away: the answer is settled all the same.
        let gone = tokio::time::timeout(
            Duration::from_millis(10),
            r.resolve(Some("t".into()), owner(&asked, Fetched::Found(rules(false)))),
        );
        assert!(gone.await.is_err(), "gave up before the answer");
        until("the answer settled", || r.current(&Some("t".into())) == Some(rules(false))).await;
        // Stale now: every request answers at once from the cache, one refresh runs behind.
        for _ in 0..10 {
            let now = r.resolve(Some("t".into()), owner(&asked, Fetched::Found(rules(true)))).await;
            assert_eq!(now, Ok(rules(false)), "the stale answer, at once");
        }
        until("refreshed", || r.current(&Some("t".into())) == Some(rules(true))).await;
        until("the refresh gone from the questions under way", || lock(&r.in_flight).is_empty()).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2, "the first question and one refresh");
    }
}
