// The jobs screen (filters kept in the URL, cursor paging, live rows) and
// the screen of one job.

import { api, AuthRequired, EventFeed, queryString } from './api.js';
import {
  ago, facts, fill, h, isTerminal, jobProgress, jsonBlock, shortId, statusBadge, serial, throttle, time,
} from './view.js';

const STATUSES = ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];
const PAGE_SIZE = 50;

/** The filters of a jobs URL, as the API takes them. */
function filtersOf(query) {
  const filters = {};
  for (const [name, value] of query) {
    if (['status', 'queue', 'kind', 'batch_id', 'key'].includes(name) || name.startsWith('metadata.')) {
      if (value) filters[name] = value;
    }
  }
  return filters;
}

/** "team=blue run=7" from the metadata filters, and back. */
function metadataText(filters) {
  return Object.entries(filters)
    .filter(([name]) => name.startsWith('metadata.'))
    .map(([name, value]) => `${name.slice('metadata.'.length)}=${value}`)
    .join(' ');
}

function metadataFilters(text) {
  const filters = {};
  for (const pair of text.split(/\s+/).filter(Boolean)) {
    const equals = pair.indexOf('=');
    if (equals > 0) filters[`metadata.${pair.slice(0, equals)}`] = pair.slice(equals + 1);
  }
  return filters;
}

/** Whether an event's job (a summary: no metadata) still fits the filters. */
function fits(job, filters) {
  return (!filters.status || job.status === filters.status)
    && (!filters.queue || job.queue === filters.queue)
    && (!filters.kind || job.kind === filters.kind)
    && (!filters.batch_id || job.batch_id === filters.batch_id);
}

/** Merges what an event says of a job into the job as last read. */
function merge(job, summary) {
  const merged = { ...job };
  for (const field of ['status', 'attempt', 'max_attempts', 'progress', 'error', 'result']) {
    if (field in summary) merged[field] = summary[field];
  }
  return merged;
}

/** Cancel and retry buttons, as the key's role and the job's status allow. */
function jobActions(ctx, job, onChanged) {
  if (!ctx.can('write')) return [];
  const act = async (action) => {
    try {
      const changed = await api('POST', `/v1/jobs/${job.id}/${action}`);
      ctx.notify(action === 'cancel'
        ? (changed.status === 'cancelled' ? 'Job cancelled.' : 'Cancellation requested; the job is stopping.')
        : 'Job queued again.');
      onChanged(changed);
    } catch (error) {
      ctx.fail(error);
    }
  };
  const buttons = [];
  if (!isTerminal(job.status)) {
    buttons.push(h('button', {
      type: 'button', 'data-action': 'cancel', disabled: job.cancel_requested || false,
      'aria-label': `Cancel job ${job.id}`, onclick: () => act('cancel'),
    }, job.cancel_requested ? 'Stopping…' : 'Cancel'));
  }
  if (job.status === 'failed' || job.status === 'cancelled') {
    buttons.push(h('button', {
      type: 'button', 'data-action': 'retry', 'aria-label': `Retry job ${job.id}`, onclick: () => act('retry'),
    }, 'Retry'));
  }
  return buttons;
}

function filterForm(ctx, filters, queues, kinds) {
  const field = (name, label, input) => h('div', { class: 'field' }, h('label', { for: `filter-${name}` }, label), input);
  const status = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s, selected: filters.status === s }, s)));
  const queue = h('input', { id: 'filter-queue', name: 'queue', list: 'queue-names', value: filters.queue || '', autocomplete: 'off' });
  const kind = h('input', { id: 'filter-kind', name: 'kind', list: 'kind-names', value: filters.kind || '', autocomplete: 'off' });
  const batch = h('input', { id: 'filter-batch_id', name: 'batch_id', value: filters.batch_id || '', autocomplete: 'off', spellcheck: 'false' });
  const metadata = h('input', {
    id: 'filter-metadata', name: 'metadata', value: metadataText(filters), placeholder: 'key=value …', autocomplete: 'off',
  });
  return h(
    'form',
    {
      class: 'filters',
      role: 'search',
      onsubmit: (event) => {
        event.preventDefault();
        const next = {
          status: status.value, queue: queue.value.trim(), kind: kind.value.trim(), batch_id: batch.value.trim(),
          ...metadataFilters(metadata.value),
        };
        ctx.navigate(`#/jobs${queryString(next)}`);
      },
    },
    field('status', 'Status', status),
    field('queue', 'Queue', queue),
    field('kind', 'Kind', kind),
    field('batch_id', 'Batch', batch),
    field('metadata', 'Metadata', metadata),
    h('div', { class: 'field buttons' },
      h('button', { type: 'submit' }, 'Filter'),
      h('a', { href: '#/jobs', class: 'button' }, 'Clear')),
    h('datalist', { id: 'queue-names' }, queues.map((name) => h('option', { value: name }))),
    h('datalist', { id: 'kind-names' }, kinds.map((name) => h('option', { value: name }))),
  );
}

export function jobsScreen(ctx) {
  const filters = filtersOf(ctx.query);
  const cursor = ctx.query.get('cursor') || '';
  const onFirstPage = !cursor;
  const rows = new Map(); // id -> {tr, job, actionsKey}
  const tbody = h('tbody', {});
  const empty = h('p', { class: 'muted', hidden: true }, 'No jobs match.');
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const formSlot = h('div', {}, filterForm(ctx, filters, [], []));
  const node = h(
    'section',
    { 'aria-labelledby': 'jobs-title' },
    h('h1', { id: 'jobs-title' }, 'Jobs'),
    formSlot,
    h('table', { class: 'jobs', id: 'jobs' },
      h('caption', { class: 'visually-hidden' }, 'Jobs, newest first'),
      h('thead', {}, h('tr', {},
        ['Job', 'Kind', 'Queue', 'Status', 'Progress', 'Attempt', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
      tbody),
    empty,
    pager,
  );

  function cells(job) {
    return [
      h('td', { 'data-label': 'Job' }, h('a', { href: `#/jobs/${job.id}`, title: job.id, class: 'mono' }, shortId(job.id))),
      h('td', { 'data-label': 'Kind' }, job.kind),
      h('td', { 'data-label': 'Queue' }, job.queue),
      h('td', { 'data-label': 'Status', class: 'job-status' }, statusBadge(job.status)),
      h('td', { 'data-label': 'Progress' }, jobProgress(job)),
      h('td', { 'data-label': 'Attempt' }, `${job.attempt} / ${job.max_attempts}`),
      h('td', { 'data-label': 'Created' }, ago(job.created_at)),
    ];
  }

  function render(job, row) {
    row.job = job;
    row.tr.dataset.status = job.status;
    const [, , , statusCell, progressCell, attemptCell, createdCell, actionsCell] = row.tr.children;
    const fresh = cells(job);
    statusCell.replaceWith(fresh[3]);
    progressCell.replaceWith(fresh[4]);
    attemptCell.replaceWith(fresh[5]);
    createdCell.replaceWith(fresh[6]);
    // Rebuilt only when they change, so a focused button keeps its focus.
    const actionsKey = `${job.status}|${job.cancel_requested}`;
    if (row.actionsKey !== actionsKey) {
      row.actionsKey = actionsKey;
      fill(actionsCell, jobActions(ctx, job, (changed) => upsert(changed)));
    }
  }

  function upsert(job, before = null) {
    let row = rows.get(job.id);
    if (!row) {
      const tr = h('tr', { 'data-job-id': job.id }, cells(job), h('td', { 'data-label': '', class: 'row-actions' }));
      row = { tr, job, actionsKey: null };
      rows.set(job.id, row);
      tbody.insertBefore(tr, before);
    }
    render(job, row);
    return row;
  }

  function remove(id) {
    rows.get(id)?.tr.remove();
    rows.delete(id);
  }

  const load = serial(async () => {
    try {
      const page = await api('GET', `/v1/jobs${queryString({ ...filters, limit: PAGE_SIZE, cursor })}`);
      // New rows go on top in the page's order; rows no longer on the page go.
      const ids = new Set(page.items.map((job) => job.id));
      for (const id of [...rows.keys()]) if (!ids.has(id)) remove(id);
      let anchor = tbody.firstChild;
      for (const job of page.items) {
        const row = upsert(job, rows.has(job.id) ? null : anchor);
        anchor = row.tr.nextSibling;
      }
      empty.hidden = rows.size > 0;
      fill(pager,
        onFirstPage ? null : h('a', { href: `#/jobs${queryString(filters)}` }, '« Newest'),
        page.next_cursor
          ? h('a', { href: `#/jobs${queryString({ ...filters, cursor: page.next_cursor })}`, 'data-action': 'older' }, 'Older »')
          : null);
    } catch (error) {
      ctx.fail(error);
    }
  });
  const reload = throttle(load, 1000);

  async function loadChoices() {
    try {
      const [queues, kinds] = await Promise.all([api('GET', '/v1/queues'), api('GET', '/v1/kinds')]);
      fill(formSlot, filterForm(ctx, filters, queues.items.map((q) => q.name), kinds.items.map((k) => k.name)));
    } catch (error) {
      // The form works without suggestions.
      console.warn('no queue or kind names for the filters', error);
    }
  }

  // The server narrows by queue and batch; the rest is matched here.
  const feed = new EventFeed({ queue: filters.queue, batch_id: filters.batch_id }, {
    onEvent: (event) => {
      const summary = event.job;
      if (!summary) return;
      const row = rows.get(summary.id);
      if (row) {
        const job = merge(row.job, summary);
        if (filters.status && job.status !== filters.status) {
          remove(job.id);
          if (onFirstPage) reload();
        } else {
          render(job, row);
        }
      } else if (onFirstPage && fits(summary, filters)) {
        // A job new to this page: read the page again (throttled) rather
        // than guess its place and its metadata.
        reload();
      }
    },
    onGap: () => reload(),
    onState: ctx.setLive,
    onAuth: () => ctx.fail(new AuthRequired()),
  }).start();
  const ticker = setInterval(() => {
    for (const row of rows.values()) render(row.job, row);
  }, 10_000);

  load();
  loadChoices();
  return {
    node,
    dispose: () => {
      feed.stop();
      reload.cancel();
      clearInterval(ticker);
    },
  };
}

const EVENT_TEXT = {
  'job.scheduled': 'scheduled',
  'job.queued': 'queued',
  'job.started': 'started',
  'job.progress': 'progress',
  'job.retrying': 'retrying',
  'job.succeeded': 'succeeded',
  'job.failed': 'failed',
  'job.cancelled': 'cancelled',
};

function timelineEntry(event) {
  const job = event.job || {};
  let detail = '';
  if (event.type === 'job.progress' && job.progress) {
    const p = job.progress;
    detail = `${p.current}${p.total ? ` / ${p.total}` : ''}${p.message ? ` ${p.message}` : ''}`;
  } else if (event.type === 'job.started') {
    detail = `attempt ${job.attempt} of ${job.max_attempts}`;
  } else if (job.error && ['job.retrying', 'job.failed', 'job.cancelled'].includes(event.type)) {
    detail = `${job.error.code}: ${job.error.message}`;
  }
  return h('li', { 'data-event': event.type, 'data-event-id': event.id },
    time(event.at), ' ', h('strong', {}, EVENT_TEXT[event.type] || event.type), detail ? ` ${detail}` : '');
}

export function jobScreen(ctx) {
  const id = ctx.params.id;
  const header = h('div', { class: 'job-head' });
  const actions = h('div', { class: 'actions' });
  const details = h('div', {});
  const spec = h('div', {});
  const result = h('div', {});
  const attempts = h('div', {});
  const timeline = h('ol', { class: 'timeline', id: 'timeline' });
  const timelineNote = h('p', { class: 'muted' });
  const node = h(
    'section',
    { id: 'job', 'aria-labelledby': 'job-title' },
    h('h1', { id: 'job-title' }, 'Job ', h('span', { class: 'mono' }, id)),
    header,
    actions,
    details,
    h('h2', {}, 'Result'), result,
    h('h2', {}, 'Attempts'), attempts,
    h('h2', {}, 'Timeline'), timelineNote, timeline,
    h('h2', {}, 'Spec'), spec,
  );
  let job = null;
  let shown = { actions: null, result: null, errors: null };
  const seen = new Set();

  function render() {
    node.dataset.status = job.status;
    fill(header, statusBadge(job.status), ' ', jobProgress(job));
    const actionsKey = `${job.status}|${job.cancel_requested}`;
    if (shown.actions !== actionsKey) {
      shown.actions = actionsKey;
      fill(actions, jobActions(ctx, job, (changed) => { job = changed; render(); }));
    }
    fill(details, facts([
      ['Kind', job.kind],
      ['Queue', h('a', { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, job.queue)],
      ['Attempt', `${job.attempt} of ${job.max_attempts}`],
      ['Priority', String(job.priority)],
      ['Batch', job.batch_id ? h('a', { href: `#/batches/${job.batch_id}`, class: 'mono' }, job.batch_id) : null],
      ['Position', job.position !== null && job.position !== undefined ? String(job.position) : null],
      ['Created', time(job.created_at)],
      ['Runs at', time(job.run_at)],
      ['Started', time(job.started_at)],
      ['Finished', time(job.finished_at)],
    ]));
    // Re-rendered only when changed, so "show all" stays open.
    const resultKey = `${isTerminal(job.status)}|${JSON.stringify(job.result ?? null)}`;
    if (shown.result !== resultKey) {
      shown.result = resultKey;
      fill(result, job.result === undefined || job.result === null
        ? h('p', { class: 'muted' }, isTerminal(job.status) ? 'none' : 'not yet')
        : jsonBlock(job.result, 'result'));
    }
    // `errors` has one entry per failed attempt; `error` is the last one,
    // also when no attempt failed (a cancellation, a failed dependency).
    const errors = job.errors && job.errors.length ? job.errors : (job.error ? [job.error] : []);
    const errorsKey = JSON.stringify(errors);
    if (shown.errors !== errorsKey) {
      shown.errors = errorsKey;
      fill(attempts, errors.length
        ? h('ol', { class: 'attempts' }, errors.map((error) => h('li', {},
          h('strong', {}, error.attempt ? `Attempt ${error.attempt}` : 'Error'), ' ', time(error.at), ' ',
          h('code', {}, error.code), ' ', h('span', { class: 'error-message' }, error.message))))
        : h('p', { class: 'muted' }, `${job.attempt} attempt(s), no error.`));
    }
  }

  function renderSpec() {
    fill(spec,
      facts([
        ['Key', job.key || null],
        ['Timeout', `${job.timeout_ms} ms`],
        ['Depends on', job.depends_on.length
          ? job.depends_on.map((dep) => h('a', { href: `#/jobs/${dep}`, class: 'mono dep' }, dep)) : null],
        ['Metadata', Object.keys(job.metadata || {}).length
          ? Object.entries(job.metadata).map(([k, v]) => h('a', {
            class: 'tag', href: `#/jobs${queryString({ [`metadata.${k}`]: v })}`,
          }, `${k}=${v}`)) : null],
        ['Callback', job.callback_url || null],
      ]),
      h('h3', {}, 'Payload'),
      jsonBlock(job.payload, 'payload'));
  }

  const load = serial(async () => {
    try {
      const first = job === null;
      job = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
      if (first) renderSpec();
      render();
    } catch (error) {
      ctx.fail(error);
    }
  });
  const reload = throttle(load, 500);

  // An id of no running instance ("0-0") makes the server replay every
  // event of this job it still keeps, then follow live: the timeline.
  const feed = new EventFeed({ job_id: id }, {
    onEvent: (event) => {
      if (!event.job || seen.has(event.id)) return;
      seen.add(event.id);
      timeline.append(timelineEntry(event));
      timelineNote.textContent = '';
      if (job) {
        job = merge(job, event.job);
        render();
      }
      // The event carries a summary: read the job for its result and errors.
      reload();
    },
    onGap: () => {
      if (timeline.children.length === 0) {
        timelineNote.textContent = 'Events from before the service last started, or older than it keeps, are not shown.';
      }
      reload();
    },
    onState: ctx.setLive,
    onAuth: () => ctx.fail(new AuthRequired()),
  }, '0-0').start();

  load();
  return {
    node,
    dispose: () => {
      feed.stop();
      reload.cancel();
    },
  };
}
