//! `/v1/internal/ui/services`: one line per service with its instance and check counts, as Consul's
//! UI endpoint answers (the web UI's services page watches it instead of one read per service).

use std::sync::Arc;

use super::{ApiError, ApiResult, Req};
use crate::acl::{Access, Resource};
use crate::app::App;
use crate::state::{Table, WatchKey};

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    match tail {
        "services" => {
            super::catalog::get_only(req)?;
            let dc = app.config.datacenter.clone();
            super::catalog::read(
                app,
                req,
                || {
                    vec![
                        WatchKey::Table(Table::Services),
                        WatchKey::Table(Table::Checks),
                        WatchKey::Table(Table::Nodes),
                    ]
                },
                |s, a| {
                    let all = s.service_summaries(&dc);
                    let before = all.len();
                    let kept: Vec<_> = all
                        .into_iter()
                        .filter(|x| a.allows(Resource::Service, &x.name, Access::Read))
                        .map(|mut x| {
                            x.nodes.retain(|n| a.allows(Resource::Node, n, Access::Read));
                            x
                        })
                        .collect();
                    let filtered = kept.len() != before;
                    let i = s.indexes();
                    (i.services.max(i.checks).max(i.nodes), kept, filtered)
                },
            )
            .await
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}
