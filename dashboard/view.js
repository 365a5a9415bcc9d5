// Small DOM and formatting helpers shared by the screens. Text always goes
// in as text nodes, never as HTML: payloads and errors are user data.

/**
 * An element: `h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child)`.
 * Props starting with `on` are listeners; `null`/`false` props and children
 * are left out.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      element.className = value;
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'value') {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const TERMINAL = ['succeeded', 'failed', 'cancelled'];

export function isTerminal(status) {
  return TERMINAL.includes(status);
}

export function statusBadge(status) {
  return h('span', { class: `status status-${status}`, 'data-status': status }, status);
}

/** "12 s", "3 min", "2 h 5 min", "4 d". */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}

/** A timestamp as local time, its full ISO form on hover. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const date = new Date(iso);
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

export function ago(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: iso }, `${duration(Date.now() - Date.parse(iso))} ago`);
}

export function shortId(id) {
  return id ? id.slice(-12) : '';
}

/** A progress bar with its percentage as text beside it. */
export function progressBar(done, total, label) {
  const percent = total > 0 ? Math.floor((done / total) * 100) : 0;
  return h(
    'div',
    { class: 'progress' },
    h('progress', { max: 100, value: percent, 'aria-label': label }),
    h('span', { class: 'progress-text', 'data-percent': percent }, `${percent} %`),
  );
}

export function jobProgress(job) {
  const progress = job.progress;
  if (!progress) return null;
  if (progress.total) {
    return progressBar(progress.current, progress.total, `progress of job ${job.id}`);
  }
  return h('span', { class: 'muted' }, `${progress.current}${progress.message ? ` ${progress.message}` : ''}`);
}

const PREVIEW_BYTES = 4096;

function sizeText(length) {
  if (length < 1024) return `${length} B`;
  if (length < 1024 * 1024) return `${(length / 1024).toFixed(1)} KiB`;
  return `${(length / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * JSON pretty-printed, cut at 4 KiB with a button to show all: a 1 MiB
 * payload must not freeze or stretch the page until asked for.
 */
export function jsonBlock(value, label) {
  if (value === undefined) {
    return h('p', { class: 'muted' }, 'none');
  }
  const text = JSON.stringify(value, null, 2) ?? 'null';
  const pre = h('pre', { class: 'json', tabindex: 0, 'aria-label': label });
  if (text.length <= PREVIEW_BYTES) {
    pre.textContent = text;
    return pre;
  }
  pre.textContent = `${text.slice(0, PREVIEW_BYTES)}\n…`;
  const button = h(
    'button',
    {
      type: 'button',
      class: 'link',
      'data-action': 'show-all',
      onclick: () => {
        pre.textContent = text;
        button.remove();
      },
    },
    `Show all ${sizeText(text.length)}`,
  );
  return h('div', { class: 'json-block' }, pre, button);
}

/** One line of a value, for tables: at most `max` characters. */
export function jsonInline(value, max = 120) {
  if (value === undefined || value === null) return '';
  const text = JSON.stringify(value) ?? '';
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/**
 * An async `fn` that never runs twice at once: a call made while it runs
 * runs it once more afterwards. So reads of the same thing answer in the
 * order they were asked, and a slow answer never overwrites a newer one.
 */
export function serial(fn) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await fn();
      } while (again);
    } finally {
      running = false;
    }
  };
  return run;
}

/** Calls `fn` at most once per `ms`, the last call winning. */
export function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  const run = () => {
    timer = null;
    if (pending) {
      pending = false;
      fn();
      timer = setTimeout(run, ms);
    }
  };
  const throttled = () => {
    pending = true;
    if (!timer) run();
  };
  throttled.cancel = () => {
    clearTimeout(timer);
    timer = null;
    pending = false;
  };
  return throttled;
}

/** A definition list from [term, description] pairs. */
export function facts(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs
      .filter(([, value]) => value !== null && value !== undefined)
      .map(([term, value]) => h('div', {}, h('dt', {}, term), h('dd', {}, value))),
  );
}
