-- An adaptive queue's concurrency: `concurrency_min` up to `concurrency`
-- (its max), moved by each instance's limiter (src/engine/limiter.rs).
-- NULL: the queue's concurrency is the fixed number `concurrency`.
ALTER TABLE queues ADD COLUMN concurrency_min INTEGER;
