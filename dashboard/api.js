// The JSON API, called with the key the user entered, and the event stream.

const KEY_STORAGE = 'spool.apiKey';

/** The API answered 401: the page needs a (different) key. */
export class AuthRequired extends Error {
  constructor() {
    super('an API key is needed');
    this.name = 'AuthRequired';
  }
}

/** Any other refusal, with the problem details the API sent. */
export class ApiProblem extends Error {
  constructor(status, problem) {
    const detail = problem && typeof problem === 'object' ? problem.detail : null;
    super(detail || `the API answered ${status}`);
    this.name = 'ApiProblem';
    this.status = status;
    this.problem = problem;
  }
}

// sessionStorage, not localStorage: the key goes when the tab closes.
export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

export function rememberKey(key) {
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(KEY_STORAGE);
  }
}

function headers(extra = {}) {
  const all = { Accept: 'application/json', ...extra };
  const key = storedKey();
  if (key) {
    all.Authorization = `Bearer ${key}`;
  }
  return all;
}

/** One JSON call; resolves to the parsed body (null when empty). */
export async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    throw new AuthRequired();
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    throw new ApiProblem(response.status, data);
  }
  return data;
}

/** A query string from an object, leaving out empty values. */
export function queryString(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') {
      search.set(name, value);
    }
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every event type but `job.progress`: for screens that show counts only. */
export const STATE_CHANGES = [
  'job.scheduled', 'job.queued', 'job.started', 'job.retrying',
  'job.succeeded', 'job.failed', 'job.cancelled', 'batch.finished', 'batch.retried',
].join(',');

/**
 * `GET /v1/events`, read with fetch rather than EventSource, which cannot
 * send the Authorization header. Reconnects after a drop with
 * `Last-Event-ID`, so the server replays what was missed (or says
 * `stream.gap`, passed to `onGap`: re-read the state).
 */
export class EventFeed {
  /**
   * @param {object} filters  job_id, batch_id, queue, types
   * @param {object} handlers onEvent(event), onGap(reason), onState(text), onAuth()
   * @param {string} [lastEventId] resume after this id; an id of no running
   *   instance (e.g. "0-0") replays every event the instance still keeps.
   */
  constructor(filters, handlers, lastEventId = '') {
    this.url = `/v1/events${queryString(filters)}`;
    this.handlers = handlers;
    this.lastEventId = lastEventId;
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) {
      this.controller.abort();
    }
  }

  async loop() {
    let delay = 500;
    while (!this.stopped) {
      this.controller = new AbortController();
      try {
        const extra = { Accept: 'text/event-stream' };
        if (this.lastEventId) {
          extra['Last-Event-ID'] = this.lastEventId;
        }
        const response = await fetch(this.url, {
          headers: headers(extra),
          signal: this.controller.signal,
          cache: 'no-store',
        });
        if (response.status === 401) {
          this.handlers.onAuth?.();
          return;
        }
        if (!response.ok || !response.body) {
          throw new Error(`the event stream answered ${response.status}`);
        }
        this.handlers.onState?.('live');
        delay = 500;
        await this.read(response.body);
      } catch (error) {
        if (this.stopped) {
          return;
        }
        console.warn('event stream dropped', error);
      }
      if (this.stopped) {
        return;
      }
      this.handlers.onState?.('reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, 10_000);
    }
  }

  // The SSE wire format: `field: value` lines, a blank line ends a
  // message, `:` starts a comment (the server's keep-alives).
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let message = { type: '', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.stopped) {
        return;
      }
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        let line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.endsWith('\r')) {
          line = line.slice(0, -1);
        }
        if (line === '') {
          this.dispatch(message);
          message = { type: '', data: [], id: null };
          continue;
        }
        if (line.startsWith(':')) {
          continue;
        }
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) {
          text = text.slice(1);
        }
        if (field === 'data') {
          message.data.push(text);
        } else if (field === 'event') {
          message.type = text;
        } else if (field === 'id') {
          message.id = text;
        }
      }
    }
  }

  dispatch(message) {
    if (message.id !== null) {
      this.lastEventId = message.id;
    }
    if (message.data.length === 0) {
      return;
    }
    let data;
    try {
      data = JSON.parse(message.data.join('\n'));
    } catch {
      return;
    }
    if (message.type === 'stream.gap') {
      this.handlers.onGap?.(data.reason);
    } else if (message.type === 'stream.end') {
      this.handlers.onState?.('server stopping');
    } else {
      this.handlers.onEvent?.(data);
    }
  }
}
