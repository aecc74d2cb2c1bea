//! `webhooks.events`: one message and one delivery per destination per public
//! event, in one transaction, then a job per delivery.

use ringer::consumer::{DeliveryInfo, Step, StepError};
use ringer::events::Event;
use sqlx::PgPool;

use crate::envelope::Envelope;
use crate::jobs::{DeliveryJob, Publisher};
use crate::store;

pub struct Fanout {
    db: PgPool,
    publisher: Publisher,
}

impl Fanout {
    pub fn new(db: PgPool, publisher: Publisher) -> Self {
        Self { db, publisher }
    }

    /// Creates the deliveries of `event` (or, for an event seen before, finds
    /// the ones never attempted) and returns their jobs, committed.
    pub async fn schedule_deliveries(&self, event: &Event) -> Result<Vec<DeliveryJob>, StepError> {
        let body = serde_json::to_value(Envelope::for_event(event))
            .map_err(|error| StepError::Poison(error.into()))?;
        let mut conn = self.db.acquire().await?;
        let rows = store::fan_out(&mut conn, event, &body).await?;
        Ok(rows.iter().map(store::JobRow::job).collect())
    }
}

impl Step for Fanout {
    type Message = Event;

    async fn handle(&self, event: Event, _info: DeliveryInfo) -> Result<(), StepError> {
        if !event.event_type.is_public() {
            // `call.*` binds only public events; anything else is not ours to send.
            return Ok(());
        }
        let jobs = self.schedule_deliveries(&event).await?;
        metrics::counter!("ringer_webhook_deliveries_created_total").increment(jobs.len() as u64);
        // After the commit: a crash here leaves the deliveries pending, and the
        // event (not yet acked) comes back and publishes them again.
        self.publisher.publish_now(&jobs).await?;
        Ok(())
    }
}
