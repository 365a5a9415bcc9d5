//! The `http` kind: one outbound HTTP request through the guarded client.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{JobContext, JobFailure, JobKind};
use crate::outbound::Outbound;

pub struct HttpKind {
    outbound: Outbound,
    max_response_bytes: usize,
}

impl HttpKind {
    pub fn new(outbound: Outbound, max_response_bytes: usize) -> Self {
        Self {
            outbound,
            max_response_bytes,
        }
    }
}

#[async_trait]
impl JobKind for HttpKind {
    fn name(&self) -> &str {
        "http"
    }

    fn description(&self) -> &str {
        "Makes one HTTP request (not yet implemented)."
    }

    fn payload_schema(&self) -> Value {
        json!({"type": "object"})
    }

    async fn run(&self, _ctx: JobContext) -> Result<Value, JobFailure> {
        let _ = (&self.outbound, self.max_response_bytes);
        Err(JobFailure::permanent(
            "not_implemented",
            "the http kind is being built",
        ))
    }
}
