// Compiled (not run) by `bash .ci/run clients` against the types
// openapi-typescript generates from openapi.yaml into generated/: it fails
// to compile when the document stops saying what a TypeScript client needs.
import type { components, operations } from "./generated/spool";

type Job = components["schemas"]["Job"];
type Batch = components["schemas"]["Batch"];

// Fields every answer carries are required: read without `undefined`.
export function finishedAt(job: Job): string | null {
  return job.finished_at;
}
export function lastError(job: Job): components["schemas"]["ErrorInfo"] | null {
  return job.error;
}
export function place(job: Job): number | null {
  return job.position;
}
export function batchOf(job: Job): string | null {
  return job.batch_id;
}
export function batchWebhook(batch: Batch): components["schemas"]["WebhookDelivery"] | null {
  return batch.webhook;
}

// Submissions keep their optional fields optional.
export const spec: components["schemas"]["JobSpec"] = { kind: "noop" };

// The list filter takes repeated metadata labels and a status from the enum.
type ListQuery = NonNullable<operations["list_jobs"]["parameters"]["query"]>;
export const query: ListQuery = { metadata: ["user=42", "report=monthly"], status: "queued" };

// The event stream and the document are text.
type Stream = operations["stream_events"]["responses"][200]["content"]["text/event-stream"];
export const stream: Stream = "id: 7\nevent: job.queued\ndata: {}\n\n";
type Document = operations["openapi_yaml"]["responses"][200]["content"]["text/plain"];
export const document: Document = "openapi: 3.1.0";
