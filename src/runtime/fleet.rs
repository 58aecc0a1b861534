//! The fleet source of DESIGN §12: for every guard with `source = { prometheus = URL }`,
//! once a second, ask Prometheus for the fleet's counts of the route's rollout and how
//! many of its replicas are rolled back, and leave the answer in the route's memory for
//! the evaluator (`crate::runtime::guard`) to judge. A read that fails is counted in
//! `cohort_guard_source_errors_total{route}` and logged once per outage; the guard
//! judges local counts until reads succeed again.
//!
//! The queries and the reading of their answers are pure (`cohort_core::rollout::fleet`);
//! this module sends them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Route;
use crate::rollout::fleet::{self, AnswerError, Identity, Sample};
use crate::rollout::{Figures, Method};
use crate::runtime::guard::{wall_now, GuardState};
use crate::runtime::outbound::{self, CallError};
use crate::runtime::server::State;
use crate::runtime::snapshot::RouteState;

/// How often the fleet is read: once a Prometheus scrape interval is common (1 s in
/// tests, 15 s by default), reading more often only finds the same samples.
pub(crate) const READ_EVERY: Duration = Duration::from_secs(1);
/// How long one query may take, connecting included.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long startup waits for the first reads before serving (a Prometheus that does
/// not answer must not keep the proxy down).
pub(crate) const FIRST_READ_WITHIN: Duration = Duration::from_secs(3);

/// Why a fleet read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{url:?} is not a URL")]
    Url { url: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

/// Reads every fleet guard's evidence, once a second, for as long as the instance runs.
pub(crate) async fn read_forever(state: Arc<State>) {
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        read_all(&state).await;
    }
}

/// One read of every fleet guard in the config in force, concurrently.
pub(crate) async fn read_all(state: &State) {
    let snap = state.snapshot.load_full();
    let reads = snap
        .config
        .routes
        .iter()
        .zip(&snap.routes)
        .filter_map(|(route, route_state)| {
            let url = route.fleet_source()?;
            Some(read_route(route, route_state, url))
        });
    join_all(reads).await;
}

/// Runs `futures` concurrently to completion (the few fleet guards of one config).
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Reads one route's fleet evidence into its memory; a failure is counted and, the
/// first time in a row, logged.
async fn read_route(route: &Route, route_state: &RouteState, url: &str) {
    let memory = route_state.memory();
    match read(route, memory, url).await {
        Ok(()) => {}
        Err(e) => {
            route_state.metrics.source_error();
            let error = e.to_string();
            if memory.fleet_failed(error.clone()).is_none() {
                tracing::warn!(route = %route.name, prometheus = url, %error, "cannot read the fleet's counts: the guard judges this replica's own counts until Prometheus answers");
            }
        }
    }
}

async fn read(route: &Route, memory: &GuardState, url: &str) -> Result<(), ReadError> {
    let Some(guard) = &route.guard else {
        return Ok(());
    };
    let endpoint: http::Uri =
        format!("{url}/api/v1/query")
            .parse()
            .map_err(|_| ReadError::Url {
                url: url.to_owned(),
            })?;
    let [name, salt, start] = route.identity_labels();
    let identity = Identity {
        route: &name,
        salt: &salt,
        start: &start,
    };
    let resumes = memory.resumes();
    let since_resume = memory
        .last_resume()
        .map(|at| u64::try_from((wall_now() - at) / 1000).unwrap_or(0));
    let peers = fleet::peers(&query(&endpoint, &identity.peers_query(since_resume)).await?)?;
    let recovered = memory.fleet_failing();
    match guard.method {
        Method::Threshold => {
            let answer = query(&endpoint, &identity.window_query(guard.window)).await?;
            let (stable, canary) = fleet::window_counts(&answer);
            let window = (Figures::from_counts(&canary), Figures::from_counts(&stable));
            memory.fleet_read(resumes, peers, Some(window));
        }
        Method::Sequential(settings) => {
            let query_text = identity.counters_query(settings.slow_bucket());
            let answer = query(&endpoint, &query_text).await?;
            if memory.fleet_counters(resumes, settings, &answer) {
                memory.fleet_read(resumes, peers, None);
            }
        }
    }
    if let Some(error) = recovered {
        tracing::info!(route = %route.name, prometheus = url, replicas = peers.replicas, previous_error = %error, "reading the fleet's counts again");
    }
    Ok(())
}

/// One instant query.
async fn query(endpoint: &http::Uri, promql: &str) -> Result<Vec<Sample>, ReadError> {
    let body = Bytes::from(fleet::form_body(promql));
    let answer = outbound::post(
        endpoint,
        "application/x-www-form-urlencoded",
        body,
        QUERY_TIMEOUT,
    )
    .await?;
    Ok(fleet::parse_vector(answer.status.as_u16(), &answer.body)?)
}
