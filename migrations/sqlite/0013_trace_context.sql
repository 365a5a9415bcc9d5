-- W3C trace context of the submission that created a job (`traceparent`,
-- `tracestate` headers of POST /v1/jobs and POST /v1/batches), returned on
-- the job. NULL when the submission carried none.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE jobs ADD COLUMN tracestate TEXT;
