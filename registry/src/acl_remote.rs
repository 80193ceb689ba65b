//! Tokens a secondary datacenter's server resolves by asking the primary, as Consul's servers do for
//! a token they hold no copy of: in a secondary without ACL replication (no replication token), and
//! in one whose replication has not yet brought any token. Once a copy exists, a token missing from
//! it is unknown, as in Consul (no asking).
//!
//! One stage of the request pipeline (`prepare`, before dispatch) asks the primary's
//! `/v1/internal/acl/rules` with the request's own token through the `?dc=` routing and records the
//! answer in a [`TokenCache`]; handlers then resolve synchronously, falling back to that cache
//! (`current`) for a token the state does not hold. The cache applies `acl_token_ttl` and
//! `acl_down_policy` while the primary is unreachable.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::acl::token_cache::{Fetched, Lookup, TokenCache};
use crate::acl::EffectiveRules;
use crate::api::ANONYMOUS_TOKEN_SECRET;
use crate::app::App;
use crate::config::Config;
use crate::state::State;
use crate::web::Req;

/// How long one question to the primary may take before it counts as unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers from the primary, by token.
#[derive(Debug)]
pub struct RemoteTokens {
    cache: Mutex<TokenCache>,
    /// Tokens being refreshed behind (async-cache): one question at a time per token.
    refreshing: Mutex<HashSet<Option<String>>>,
}

impl RemoteTokens {
    pub fn new(config: &Config) -> Self {
        RemoteTokens {
            cache: Mutex::new(TokenCache::new(config.acl_token_ttl(), config.acl_down_policy())),
            refreshing: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refreshing(&self) -> std::sync::MutexGuard<'_, HashSet<Option<String>>> {
        self.refreshing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the primary last said `token` may do (or the down policy's answer), if anything.
    pub fn current(&self, token: &Option<String>) -> Option<EffectiveRules> {
        self.cache().current(token)
    }
}

/// Whether a token missing from `state` is asked of the primary.
pub fn asks_primary(config: &Config, state: &State) -> bool {
    config.acl_enabled
        && config.primary_datacenter() != config.datacenter
        && (!config.acl_replicates() || !state.acl_holds_global_tokens())
}

/// The pipeline stage: makes sure a request's token that only the primary knows is in the cache
/// (fresh, refreshed, or the down policy's answer) before the handlers resolve it.
pub async fn prepare(app: &Arc<App>, req: &Req) {
    let config = &app.config;
    if !config.acl_enabled || config.primary_datacenter() == config.datacenter {
        return;
    }
    // Another datacenter's servers resolve what is sent to them.
    if req.get("dc").is_some_and(|dc| !dc.is_empty() && dc != config.datacenter) {
        return;
    }
    let token = crate::http::acl::token_of(app, req);
    let secret = token.as_deref().unwrap_or(ANONYMOUS_TOKEN_SECRET);
    let now = crate::http::acl::now_rfc3339();
    let must_ask = app.sm.read(|s| s.acl_token_by_secret(secret, &now).is_none() && asks_primary(config, s));
    if !must_ask {
        return;
    }
    let lookup = app.remote_tokens.cache().lookup(&token, Instant::now());
    match lookup {
        Lookup::Fresh(_) => {}
        Lookup::RefreshBehind(_) => {
            if app.remote_tokens.refreshing().insert(token.clone()) {
                let app = app.clone();
                tokio::spawn(async move {
                    refresh(&app, token.clone()).await;
                    app.remote_tokens.refreshing().remove(&token);
                });
            }
        }
        Lookup::Fetch => refresh(app, token).await,
    }
}

async fn refresh(app: &Arc<App>, token: Option<String>) {
    let fetched = ask_primary(app, token.as_deref()).await;
    if let Fetched::Unreachable(why) = &fetched {
        tracing::warn!(primary = %app.config.primary_datacenter(), error = %why,
            down_policy = %app.config.acl_down_policy, "cannot resolve a token with the primary datacenter");
    }
    let default_allow = app.config.acl_default_allow();
    // A refusal forgets the token: the handlers then answer "ACL not found" themselves.
    let _ = app.remote_tokens.cache().settle(&token, fetched, default_allow, Instant::now());
}

/// The primary's `/v1/internal/acl/rules` with the token itself, as Consul's `ACL.TokenRead` with it.
async fn ask_primary(app: &Arc<App>, token: Option<&str>) -> Fetched {
    let primary = app.config.primary_datacenter().to_string();
    let asked = crate::http::get_from_datacenter(app, &primary, "/v1/internal/acl/rules".into(), token);
    let Ok(resp) = tokio::time::timeout(ASK_TIMEOUT, asked).await else {
        return Fetched::Unreachable(format!("datacenter {primary:?} did not answer in {ASK_TIMEOUT:?}"));
    };
    Fetched::from_rules_answer(resp.status().as_u16(), resp.body(), &format!("datacenter {primary:?}"))
}
