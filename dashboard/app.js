// The dashboard's shell: hash routes, the key prompt, the caller's role.
//
// Routes live in the URL's hash (`#/jobs?status=failed`), so any view is a
// link to share and a reload restores it, while the server serves one page.

import { api, ApiProblem, AuthRequired, rememberKey, storedKey } from './api.js';
import { batchScreen, batchesScreen } from './batches.js';
import { jobScreen, jobsScreen } from './jobs.js';
import { queuesScreen } from './queues.js';
import { fill, h } from './view.js';

const ROLES = ['read', 'write', 'admin'];

const ROUTES = [
  { pattern: /^\/(?:queues)?$/, screen: queuesScreen, nav: 'queues' },
  { pattern: /^\/jobs$/, screen: jobsScreen, nav: 'jobs' },
  { pattern: /^\/jobs\/(?<id>[^/]+)$/, screen: jobScreen, nav: 'jobs' },
  { pattern: /^\/batches$/, screen: batchesScreen, nav: 'batches' },
  { pattern: /^\/batches\/(?<id>[^/]+)$/, screen: batchScreen, nav: 'batches' },
];

const main = document.getElementById('main');
const notice = document.getElementById('notice');
const live = document.getElementById('live');
const who = document.getElementById('who');
const forget = document.getElementById('forget-key');
const prompt = document.getElementById('key-prompt');
const keyForm = document.getElementById('key-form');
const keyInput = document.getElementById('key-input');
const keyError = document.getElementById('key-error');

let caller = null; // {tenant, role} from /v1/whoami
let current = null; // the screen shown: {node, dispose}

function can(role) {
  return caller !== null && ROLES.indexOf(caller.role) >= ROLES.indexOf(role);
}

function notify(message, kind = 'info') {
  notice.className = `notice notice-${kind}`;
  notice.textContent = message;
  notice.hidden = false;
}

/** The event stream's state; '' for a screen that follows none. */
function setLive(state) {
  live.textContent = state === 'live' ? '● live' : state ? `○ ${state}` : '';
  live.dataset.state = state;
}

/** Where every screen sends its failures. */
function fail(error) {
  if (error instanceof AuthRequired) {
    askForKey(storedKey() ? 'This key was refused (unknown, revoked or expired).' : '');
  } else if (error instanceof ApiProblem) {
    notify(error.message, 'error');
  } else {
    console.error(error);
    notify(`Failed: ${error.message || error}`, 'error');
  }
}

function askForKey(message) {
  if (current) {
    current.dispose();
    current = null;
  }
  fill(main);
  caller = null;
  renderCaller();
  keyError.textContent = message;
  prompt.hidden = false;
  keyInput.value = '';
  keyInput.focus();
}

keyForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  rememberKey(key);
  if (await identify()) {
    prompt.hidden = true;
    route();
  }
});

forget.addEventListener('click', () => {
  rememberKey('');
  askForKey('');
});

function renderCaller() {
  who.textContent = caller ? `${caller.tenant} · ${caller.role}` : '';
  forget.hidden = !storedKey() || caller === null;
}

/** Asks the API who the key is; false (and the prompt shown) when refused. */
async function identify() {
  try {
    caller = await api('GET', '/v1/whoami');
    renderCaller();
    return true;
  } catch (error) {
    fail(error);
    return false;
  }
}

function route() {
  if (caller === null) return;
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = hash.split('?');
  if (current) {
    current.dispose();
    current = null;
  }
  notice.hidden = true;
  setLive('');
  const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(path) })).find(({ m }) => m);
  for (const link of document.querySelectorAll('nav a[data-nav]')) {
    if (match && link.dataset.nav === match.r.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (!match) {
    fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the queues')));
    return;
  }
  const params = {};
  for (const [name, value] of Object.entries(match.m.groups || {})) params[name] = decodeURIComponent(value);
  current = match.r.screen({
    params,
    query: new URLSearchParams(search),
    can,
    notify,
    fail,
    setLive,
    navigate: (target) => { location.hash = target.replace(/^#/, ''); },
  });
  fill(main, current.node);
  document.title = `${match.r.nav[0].toUpperCase()}${match.r.nav.slice(1)} · Spool`;
}

window.addEventListener('hashchange', () => {
  route();
  main.focus({ preventScroll: true });
});

(async () => {
  if (await identify()) route();
})();
