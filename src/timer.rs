//! The timer's work, whichever clock fires it: the Functions host's timer trigger (`server::functions`),
//! Lambda's EventBridge schedule (`lambda`) or `itsmc serve`'s own clock. One tick drains the outbox, deletes
//! finished deliveries past their keeping time, syncs the connections into Log Analytics and refreshes the
//! connections' configuration once a day.

use std::sync::Arc;

use serde::Serialize;

use crate::intake::Intake;
use crate::outbox::{self, DrainReport};
use crate::sync::{self, Syncer};

/// What a tick did: the reports, and one line per step for the platform's log.
#[derive(Debug, Serialize)]
pub struct Tick {
    pub outbox: DrainReport,
    pub sync: sync::Report,
    #[serde(skip)]
    pub logs: Vec<String>,
}

/// Run one tick. Only a sync that cannot start at all is an error; a connection that fails is in the report.
pub async fn tick(intake: &Arc<Intake>, syncer: &Syncer) -> Result<Tick, String> {
    let outbox = outbox::drain(intake).await;
    let mut logs = vec![format!(
        "outbox: {} pending, {} attempted, {} succeeded, {} requeued, {} dead-lettered",
        outbox.pending, outbox.attempted, outbox.succeeded, outbox.requeued, outbox.dead
    )];
    match outbox::prune(intake, intake.config.outbox.keep_done, 5_000).await {
        Ok(0) => {}
        Ok(pruned) => logs.push(format!("outbox: {pruned} finished deliveries past their keeping time deleted")),
        Err(e) => logs.push(format!("outbox: finished deliveries could not be pruned: {e}")),
    }
    let sync = syncer.run(&sync::Request::default(), &|_| {}).await?;
    if let Some(why) = &sync.skipped {
        logs.push(format!("sync: skipped, {why}"));
    }
    for run in &sync.runs {
        let stopped = run.error.as_deref().map(|e| format!("; stopped: {e}")).unwrap_or_default();
        logs.push(format!("sync {run}{stopped}"));
    }
    for refreshed in crate::connections::refresh_due(intake).await {
        logs.push(format!(
            "configuration of {}: {} choice lists, {} templates; {}",
            refreshed.connection,
            refreshed.configuration.choices.len(),
            refreshed.configuration.templates.len(),
            refreshed.diagnosis.message
        ));
    }
    Ok(Tick { outbox, sync, logs })
}
