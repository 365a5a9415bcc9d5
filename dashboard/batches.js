// The batches screens: open a batch, and one batch with its progress,
// counts and results as they arrive.

import { api, AuthRequired, EventFeed, STATE_CHANGES } from './api.js';
import {
  facts, fill, h, jsonInline, progressBar, shortId, statusBadge, serial, throttle, time,
} from './view.js';

// There is no list of batches in the API: the screen offers the batches of
// the newest jobs (one page), and a field to open any batch by id.
const RECENT_JOBS = 50;
// Results are followed live up to this many rows; past it, on request.
const LIVE_RESULTS = 200;
const RESULTS_PAGE = 100;

export function batchesScreen(ctx) {
  const recent = h('ul', { class: 'plain' }, h('li', { class: 'muted' }, 'Loading…'));
  const input = h('input', { id: 'batch-id', name: 'batch_id', required: true, autocomplete: 'off', spellcheck: 'false' });
  const node = h(
    'section',
    { 'aria-labelledby': 'batches-title' },
    h('h1', { id: 'batches-title' }, 'Batches'),
    h('form', {
      class: 'filters',
      onsubmit: (event) => {
        event.preventDefault();
        if (input.value.trim()) ctx.navigate(`#/batches/${encodeURIComponent(input.value.trim())}`);
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'batch-id' }, 'Batch id'), input),
    h('div', { class: 'field buttons' }, h('button', { type: 'submit' }, 'Open'))),
    h('h2', {}, `Batches of the ${RECENT_JOBS} newest jobs`),
    recent,
  );

  (async () => {
    try {
      const page = await api('GET', `/v1/jobs?limit=${RECENT_JOBS}`);
      const batches = [];
      for (const job of page.items) {
        if (job.batch_id && !batches.includes(job.batch_id)) batches.push(job.batch_id);
      }
      fill(recent, batches.length
        ? batches.map((id) => h('li', {}, h('a', { href: `#/batches/${id}`, class: 'mono' }, id)))
        : h('li', { class: 'muted' }, 'None.'));
    } catch (error) {
      ctx.fail(error);
    }
  })();
  return { node, dispose: () => {} };
}

const COUNTS = ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];

export function batchScreen(ctx) {
  const id = ctx.params.id;
  const head = h('div', { class: 'job-head' });
  const actions = h('div', { class: 'actions' });
  const details = h('div', {});
  const tbody = h('tbody', {});
  const more = h('div', { class: 'pager' });
  const node = h(
    'section',
    { id: 'batch', 'aria-labelledby': 'batch-title' },
    h('h1', { id: 'batch-title' }, 'Batch ', h('span', { class: 'mono' }, id)),
    head,
    actions,
    details,
    h('p', {}, h('a', { href: `#/jobs?batch_id=${encodeURIComponent(id)}` }, 'Its jobs')),
    h('h2', {}, 'Results, in the order jobs finished'),
    h('table', { class: 'jobs', id: 'results' },
      h('thead', {}, h('tr', {}, ['#', 'Job', 'Status', 'Finished', 'Result or error'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody),
    more,
  );
  let batch = null;
  let cursor = '';
  let finishedReading = false;
  let seenRetries = null; // the batch's re-runs when last read
  let reading = false;
  let readAgain = false; // asked while a read ran: read once more after it
  let shownActions = null;

  function render() {
    const c = batch.counts;
    const finished = c.succeeded + c.failed + c.cancelled;
    node.dataset.status = batch.status;
    fill(head, statusBadge(batch.status), ' ',
      progressBar(finished, batch.total, `jobs of batch ${batch.id} finished`),
      h('span', { class: 'muted' }, ` ${finished} of ${batch.total} finished`));
    const actionsKey = `${batch.status}|${batch.cancel_requested}`;
    if (shownActions !== actionsKey) {
      shownActions = actionsKey;
      let action = null;
      if (ctx.can('write') && batch.status === 'running' && !batch.cancel_requested) {
        action = h('button', { type: 'button', 'data-action': 'cancel-batch', onclick: cancel }, 'Cancel batch');
      } else if (ctx.can('write') && batch.finished_at && c.failed + c.cancelled > 0) {
        action = h('button', { type: 'button', 'data-action': 'rerun-batch', onclick: rerun }, 'Re-run failed jobs');
      }
      fill(actions, action);
    }
    fill(details, facts([
      ...COUNTS.map((name) => [name[0].toUpperCase() + name.slice(1), h('span', { 'data-count': name }, String(c[name]))]),
      ['Success threshold', String(batch.success_threshold)],
      ['In flight', batch.max_in_flight ? `${batch.in_flight} of at most ${batch.max_in_flight}` : null],
      ['Re-runs', batch.retries || batch.retry
        ? h('span', { 'data-retries': '' }, String(batch.retries),
          batch.retry ? ` (by itself up to ${batch.retry.max_times}, past ${batch.retry.when_failed_ratio * 100} % failed)` : '')
        : null],
      ['Metadata', Object.keys(batch.metadata || {}).length ? jsonInline(batch.metadata) : null],
      ['Created', time(batch.created_at)],
      ['Finished', time(batch.finished_at)],
    ]));
  }

  async function cancel() {
    try {
      await api('POST', `/v1/batches/${encodeURIComponent(id)}/cancel`);
      ctx.notify('Batch cancelled; its running jobs are stopping.');
      await load();
    } catch (error) {
      ctx.fail(error);
    }
  }

  async function rerun() {
    try {
      await api('POST', `/v1/batches/${encodeURIComponent(id)}/retry`, { scope: 'failed' });
      ctx.notify('Batch re-run: its failed and cancelled jobs run again.');
      await load();
    } catch (error) {
      ctx.fail(error);
    }
  }

  const load = serial(async () => {
    try {
      batch = await api('GET', `/v1/batches/${encodeURIComponent(id)}`);
      // Re-run after it was read to the end (it may have ended again
      // already): read on from the held cursor.
      if (!batch.finished_at || (seenRetries !== null && batch.retries !== seenRetries)) {
        finishedReading = false;
      }
      seenRetries = batch.retries;
      render();
      if (tbody.children.length < LIVE_RESULTS) readResults();
    } catch (error) {
      ctx.fail(error);
    }
  });
  const reload = throttle(load, 1000);

  // The results cursor reads each result once: pages are appended, and
  // reading stops at LIVE_RESULTS rows until asked for more.
  async function readResults(onRequest = false) {
    if (finishedReading) return;
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    try {
      for (;;) {
        const query = new URLSearchParams({ limit: String(RESULTS_PAGE) });
        if (cursor) query.set('cursor', cursor);
        const page = await api('GET', `/v1/batches/${encodeURIComponent(id)}/results?${query}`);
        for (const item of page.items) {
          // A re-run job's new result replaces its old row.
          tbody.querySelector(`tr[data-job-id="${item.job_id}"]`)?.remove();
          tbody.append(h('tr', { 'data-job-id': item.job_id, 'data-status': item.status, 'data-finished-at': item.finished_at },
            h('td', { 'data-label': '#' }, String(item.index)),
            h('td', { 'data-label': 'Job' }, h('a', { href: `#/jobs/${item.job_id}`, class: 'mono', title: item.job_id }, shortId(item.job_id))),
            h('td', { 'data-label': 'Status' }, statusBadge(item.status)),
            h('td', { 'data-label': 'Finished' }, time(item.finished_at)),
            h('td', { 'data-label': 'Result', class: 'mono clip' },
              item.error ? `${item.error.code}: ${item.error.message}` : jsonInline(item.result))));
        }
        if (page.next_cursor === null || page.next_cursor === undefined) {
          finishedReading = true;
          cursor = page.cursor || cursor;
          break;
        }
        cursor = page.next_cursor;
        if (page.items.length < RESULTS_PAGE) break;
        if (!onRequest && tbody.children.length >= LIVE_RESULTS) break;
        if (onRequest) break;
      }
    } catch (error) {
      ctx.fail(error);
    } finally {
      reading = false;
      if (readAgain && !finishedReading && tbody.children.length < LIVE_RESULTS) {
        readAgain = false;
        readResults();
      }
      fill(more, !finishedReading && tbody.children.length >= LIVE_RESULTS
        ? h('button', { type: 'button', 'data-action': 'more-results', onclick: () => readResults(true) }, 'More results')
        : null);
    }
  }

  const feed = new EventFeed({ batch_id: id, types: STATE_CHANGES }, {
    onEvent: () => reload(),
    onGap: () => reload(),
    onState: ctx.setLive,
    onAuth: () => ctx.fail(new AuthRequired()),
  }).start();

  load();
  return {
    node,
    dispose: () => {
      feed.stop();
      reload.cancel();
    },
  };
}
