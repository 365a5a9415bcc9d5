// The queues screen: live counts, throughput, the oldest ready job's age,
// and (admin keys) pause/resume and concurrency/capacity.

import { api, AuthRequired, EventFeed, STATE_CHANGES } from './api.js';
import { duration, facts, fill, h, serial, throttle } from './view.js';

// Throughput is counted here, from the job.succeeded and job.failed events
// this page receives, in a rolling window: the API keeps no history of it,
// so the figure covers at most the last WINDOW_MS since the page opened.
const WINDOW_MS = 5 * 60 * 1000;
const BUCKET_MS = 10 * 1000;
// How often the queues are read again without an event.
const TICK_MS = 5 * 1000;


class Throughput {
  constructor() {
    this.opened = Date.now();
    this.buckets = new Map(); // queue -> Map(bucket start -> finished jobs)
  }

  count(queue, at = Date.now()) {
    const start = at - (at % BUCKET_MS);
    let buckets = this.buckets.get(queue);
    if (!buckets) {
      buckets = new Map();
      this.buckets.set(queue, buckets);
    }
    buckets.set(start, (buckets.get(start) || 0) + 1);
  }

  /** Jobs finished per minute over the window (or since the page opened). */
  perMinute(queue, now = Date.now()) {
    const buckets = this.buckets.get(queue);
    let finished = 0;
    if (buckets) {
      for (const [start, n] of buckets) {
        if (start + BUCKET_MS <= now - WINDOW_MS) {
          buckets.delete(start);
        } else {
          finished += n;
        }
      }
    }
    const span = Math.min(WINDOW_MS, Math.max(now - this.opened, BUCKET_MS));
    return (finished * 60_000) / span;
  }

  /** Finished jobs per bucket, oldest first, for the sparkline. */
  series(queue, now = Date.now()) {
    const buckets = this.buckets.get(queue) || new Map();
    const count = WINDOW_MS / BUCKET_MS;
    const last = now - (now % BUCKET_MS);
    const values = [];
    for (let i = count - 1; i >= 0; i -= 1) {
      values.push(buckets.get(last - i * BUCKET_MS) || 0);
    }
    return values;
  }
}

const SVG = 'http://www.w3.org/2000/svg';

function sparkline(values, label) {
  const width = 120;
  const height = 24;
  const max = Math.max(1, ...values);
  const step = width / Math.max(1, values.length - 1);
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - (v / max) * (height - 2) - 1).toFixed(1)}`)
    .join(' ');
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'sparkline');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points);
  svg.append(line);
  return svg;
}

export function queuesScreen(ctx) {
  const throughput = new Throughput();
  const list = h('div', { class: 'cards', id: 'queues' }, h('p', { class: 'muted' }, 'Loading…'));
  const node = h(
    'section',
    { 'aria-labelledby': 'queues-title' },
    h('h1', { id: 'queues-title' }, 'Queues'),
    h(
      'p',
      { class: 'muted' },
      'Counts are live. Throughput counts the jobs that finished while this page was open, over at most the last 5 minutes.',
    ),
    list,
  );
  let queues = [];
  let editing = null; // the queue whose settings form is open

  const load = serial(async () => {
    try {
      const page = await api('GET', '/v1/queues');
      queues = page.items;
      render();
    } catch (error) {
      ctx.fail(error);
    }
  });
  const reload = throttle(load, 1000);

  // `oldest_ready_at` comes with each queue (service-wide, up to a second
  // old); the age is worked out at each render, so it grows between loads.
  function oldestReady(queue) {
    if (!queue.oldest_ready_at) return { text: '—', title: 'no job is ready' };
    const since = Date.parse(queue.oldest_ready_at);
    return { text: duration(Date.now() - since), title: `ready since ${queue.oldest_ready_at}` };
  }

  async function change(queue, settings) {
    try {
      await api('PUT', `/v1/queues/${encodeURIComponent(queue.name)}`, settings);
      ctx.notify(`Queue ${queue.name} changed.`);
      editing = null;
      await load();
    } catch (error) {
      ctx.fail(error);
    }
  }

  // An adaptive queue's concurrency is a range: {min, max}.
  const adaptive = (queue) => typeof queue.concurrency === 'object' && queue.concurrency !== null;

  function concurrencyText(queue) {
    if (!adaptive(queue)) return String(queue.concurrency);
    const { min, max } = queue.concurrency;
    return `${queue.current_concurrency} (adaptive, ${min}–${max})`;
  }

  function settingsForm(queue) {
    const number = (name, value) => h('input', {
      type: 'number', name, min: 1, required: true, value, id: `${name}-${queue.name}`,
    });
    const fields = adaptive(queue)
      ? [number('concurrency-min', queue.concurrency.min), number('concurrency-max', queue.concurrency.max)]
      : [number('concurrency', queue.concurrency)];
    const concurrencyValue = () => (adaptive(queue)
      ? { min: Number(fields[0].value), max: Number(fields[1].value) }
      : Number(fields[0].value));
    const capacity = h('input', {
      type: 'number', name: 'capacity', min: 0, required: true, value: queue.capacity,
      id: `capacity-${queue.name}`,
    });
    return h(
      'form',
      {
        class: 'settings',
        onsubmit: (event) => {
          event.preventDefault();
          change(queue, { concurrency: concurrencyValue(), capacity: Number(capacity.value) });
        },
      },
      ...fields.flatMap((field) => [
        h('label', { for: field.id }, {
          concurrency: 'Concurrency', 'concurrency-min': 'Concurrency, least', 'concurrency-max': 'Concurrency, most',
        }[field.name]),
        field,
      ]),
      h('label', { for: capacity.id }, 'Capacity'),
      capacity,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', 'data-action': 'save' }, 'Save'),
        h('button', { type: 'button', onclick: () => { editing = null; render(); } }, 'Close')),
    );
  }

  function card(queue) {
    const rate = throughput.perMinute(queue.name);
    const age = oldestReady(queue);
    const jobsOf = (status) => `#/jobs?queue=${encodeURIComponent(queue.name)}&status=${status}`;
    const actions = [];
    if (ctx.can('admin')) {
      actions.push(
        h('button', {
          type: 'button',
          'data-action': queue.paused ? 'resume' : 'pause',
          onclick: () => change(queue, { paused: !queue.paused }),
        }, queue.paused ? 'Resume' : 'Pause'),
        h('button', {
          type: 'button',
          'data-action': 'edit',
          'aria-expanded': editing === queue.name ? 'true' : 'false',
          onclick: () => { editing = editing === queue.name ? null : queue.name; render(); },
        }, 'Settings'),
      );
    }
    return h(
      'article',
      { class: 'card queue', 'data-queue': queue.name },
      h('header', {},
        h('h2', {}, h('a', { href: `#/jobs?queue=${encodeURIComponent(queue.name)}` }, queue.name)),
        queue.paused ? h('span', { class: 'status status-paused' }, 'paused') : null),
      facts([
        ['Queued', h('a', { href: jobsOf('queued'), 'data-count': 'queued' }, String(queue.counts.queued))],
        ['Running', h('a', { href: jobsOf('running'), 'data-count': 'running' }, String(queue.counts.running))],
        ['Scheduled', h('a', { href: jobsOf('scheduled'), 'data-count': 'scheduled' }, String(queue.counts.scheduled))],
        ['Concurrency', h('span', { 'data-concurrency': '' }, concurrencyText(queue))],
        ['Capacity', String(queue.capacity)],
        ['Oldest ready', h('span', { title: age.title, 'data-oldest': '' }, age.text)],
        ['Finished / min', h('span', { 'data-throughput': '' }, rate.toFixed(rate < 10 ? 1 : 0),
          sparkline(throughput.series(queue.name), `jobs of ${queue.name} finished per 10 s, last 5 minutes`))],
      ]),
      actions.length ? h('div', { class: 'actions' }, actions) : null,
      editing === queue.name && ctx.can('admin') ? settingsForm(queue) : null,
    );
  }

  function render() {
    // Keep the focused control across re-renders: the cards are rebuilt.
    const focused = document.activeElement;
    const focusKey = focused && list.contains(focused)
      ? [focused.closest('[data-queue]')?.dataset.queue, focused.dataset.action || focused.name]
      : null;
    if (queues.length === 0) {
      fill(list, h('p', { class: 'muted' }, 'No queues.'));
    } else {
      fill(list, queues.map(card));
    }
    if (focusKey && focusKey[0]) {
      const card = [...list.querySelectorAll('[data-queue]')].find((c) => c.dataset.queue === focusKey[0]);
      const again = card && [...card.querySelectorAll('button, input, a')]
        .find((c) => (c.dataset.action || c.name) === focusKey[1]);
      again?.focus();
    }
  }

  // Progress events change no count: a busy service sends many.
  const feed = new EventFeed({ types: STATE_CHANGES }, {
    onEvent: (event) => {
      if (event.job && ['job.succeeded', 'job.failed'].includes(event.type)) {
        throughput.count(event.job.queue, Date.parse(event.at) || Date.now());
      }
      // Inputs being typed into are not rebuilt under the user's fingers.
      if (editing === null) reload();
    },
    onGap: () => reload(),
    onState: ctx.setLive,
    onAuth: () => ctx.fail(new AuthRequired()),
  }).start();
  // Ages and rates move with time even when no event comes, and the oldest
  // ready job changes when it starts: the queues are read again now and then.
  const ticker = setInterval(() => {
    if (editing === null) {
      reload();
    }
  }, TICK_MS);

  load();
  return {
    node,
    dispose: () => {
      feed.stop();
      reload.cancel();
      clearInterval(ticker);
    },
  };
}
