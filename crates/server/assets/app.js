// imgclass web page: upload images, follow their jobs live over server-sent events, see results.
// Plain DOM code: every piece of data is put on the page as text (textContent, text nodes), never
// parsed as markup.
'use strict';

(() => {
  const PAGE_SIZE = 24;
  const UPLOAD_CONCURRENCY = 4;
  const RECONNECT_MS = 3000;
  const EVENT_KINDS = [
    'created', 'running', 'succeeded', 'failed', 'canceled', 'retried', 'requeued', 'deleted',
  ];
  // How far along a job is, to order two views of it with the same timestamp.
  const RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, canceled: 2 };
  const STATUS_TEXT = {
    uploading: 'uploading…',
    rejected: 'rejected',
    queued: 'queued',
    running: 'running…',
    succeeded: 'succeeded',
    failed: 'failed',
    canceled: 'canceled',
  };

  const TOKEN_KEY = 'imgclass-token';
  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $('app'),
    login: $('login'),
    loginForm: $('login-form'),
    tokenInput: $('token-input'),
    loginError: $('login-error'),
    signOut: $('sign-out'),
    cards: $('cards'),
    empty: $('empty'),
    loadMore: $('load-more'),
    filter: $('status-filter'),
    retryAll: $('retry-all'),
    listError: $('list-error'),
    connection: $('connection'),
    connectionText: $('connection-text'),
    dropzone: $('dropzone'),
    pick: $('pick'),
    input: $('file-input'),
    announcer: $('announcer'),
  };

  /** Cards of jobs by job id. Cards of uploads still in flight (or refused) are not in here. */
  const byId = new Map();
  let nextCursor = null;
  let listGeneration = 0;
  let listLoading = false; // a first page (on load, on a new filter) is on its way
  let lastSeq = 0;

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  /** Creates an element. Text only ever goes in as text nodes. */
  function h(tag, props, children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key === 'onclick') el.addEventListener('click', value);
      else if (key.startsWith('aria-') || key === 'role' || key === 'title') el.setAttribute(key, value);
      else el[key] = value;
    }
    for (const child of [].concat(children || [])) {
      if (child !== null && child !== undefined && child !== false) el.append(child);
    }
    return el;
  }

  /** An RFC 3339 UTC time in a form that sorts as text (fraction padded to nanoseconds). */
  function stamp(time) {
    if (!time) return '';
    const [whole, fraction = ''] = String(time).replace(/(Z|[+-]00:00)$/, '').split('.');
    return `${whole}.${fraction.padEnd(9, '0')}`;
  }

  /** Whether `next` is a newer view of a job than `current`. Events arrive in order, so on a tie
   *  an event wins; a response to a request only wins when it is further along. */
  function isNewer(current, next, fromEvent) {
    if (!current) return true;
    const a = stamp(current.updated_at);
    const b = stamp(next.updated_at);
    if (a !== b) return b > a;
    if (fromEvent) return true;
    return (RANK[next.status] ?? 0) > (RANK[current.status] ?? 0);
  }

  function percent(p) {
    const v = Math.max(0, Math.min(1, Number(p) || 0)) * 100;
    if (v > 0 && v < 0.05) return '<0.1%';
    return `${v.toFixed(1)}%`;
  }

  function millis(ms) {
    const v = Number(ms) || 0;
    return v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
  }

  function bytes(n) {
    const v = Number(n) || 0;
    if (v < 1024) return `${v} B`;
    if (v < 1024 * 1024) return `${(v / 1024).toFixed(v < 10 * 1024 ? 1 : 0)} KB`;
    return `${(v / 1024 / 1024).toFixed(1)} MB`;
  }

  function shortType(contentType) {
    const sub = String(contentType || '').split('/')[1] || '';
    return sub.replace(/^x-/, '').toUpperCase();
  }

  /** The message of an API error response, or a description of the HTTP status. */
  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch (_) {
      // Not JSON: fall through.
    }
    return `the server answered ${resp.status} ${resp.statusText || ''}`.trim();
  }

  // ---------------------------------------------------------------------------------------------
  // API token (only when the server asks for one): kept in this tab's session storage.

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Storage refused (private mode): the token lasts until the page is reloaded.
    }
    memoryToken = value;
  }

  let memoryToken = '';
  const currentToken = () => token() || memoryToken;

  /** A URL for what the browser fetches by itself (EventSource, <img>), which cannot send the
   *  Authorization header: the token goes as the access_token query parameter. */
  function withToken(url) {
    const t = currentToken();
    if (!t) return url;
    return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(t)}`;
  }

  /** fetch() that sends the token and turns network failures into readable errors. A 401 means
   *  the token is missing, wrong, expired or revoked: the page asks for one. */
  async function request(url, options) {
    const headers = { accept: 'application/json' };
    const t = currentToken();
    if (t) headers.authorization = `Bearer ${t}`;
    let resp;
    try {
      resp = await fetch(url, { ...options, headers: { ...headers, ...((options || {}).headers || {}) } });
    } catch (_) {
      throw new Error('the server could not be reached');
    }
    if (resp.status === 401) askForToken(await errorMessage(resp.clone()), Boolean(t));
    return resp;
  }

  function announce(text) {
    ui.announcer.textContent = text;
  }

  function displayName(card) {
    return (card.job && card.job.file_name) || card.fileName || 'unnamed image';
  }

  // ---------------------------------------------------------------------------------------------
  // Cards

  function newCard() {
    const thumb = h('img', { class: 'thumb', alt: '', decoding: 'async', loading: 'lazy' });
    const thumbBox = h('div', { class: 'thumb-box' }, [
      thumb,
      h('span', { class: 'thumb-fallback', text: 'no preview', 'aria-hidden': 'true' }),
    ]);
    thumb.addEventListener('error', () => thumbBox.classList.add('no-image'));
    thumb.addEventListener('load', () => thumbBox.classList.remove('no-image'));
    const name = h('h3', { class: 'card-name' });
    const badge = h('span', { class: 'status-badge' });
    const meta = h('span', { class: 'card-meta' });
    const body = h('div', { class: 'card-body' });
    const actions = h('div', { class: 'card-actions' });
    const el = h('article', { class: 'card' }, [
      h('div', { class: 'card-head' }, [
        thumbBox,
        h('div', { class: 'card-title' }, [name, h('p', { class: 'card-sub' }, [badge, meta])]),
      ]),
      body,
      actions,
    ]);
    return {
      el, thumb, thumbBox, name, badge, meta, body, actions,
      job: null, // the latest view of the job, once it exists
      fileName: null, // the local file's name, for uploads
      localUrl: null, // object URL of the local file, for uploads
      rejected: null, // the server's message when it refused the upload
      busy: null, // the action in flight: 'retry', 'cancel' or 'delete'
      actionError: null, // the message of the last failed action
    };
  }

  function statusOf(card) {
    if (card.job) return card.job.status;
    return card.rejected !== null ? 'rejected' : 'uploading';
  }

  function labelParts(label) {
    const text = String(label);
    const comma = text.indexOf(',');
    if (comma < 0) return [h('span', { class: 'label-main', text })];
    return [
      h('span', { class: 'label-main', text: text.slice(0, comma) }),
      h('span', { class: 'label-rest', text: text.slice(comma) }),
    ];
  }

  function chart(result) {
    const rows = (result.predictions || []).map((p, i) => {
      const fill = h('span', { class: 'bar-fill' });
      // CSSOM, not a style attribute: allowed by the content security policy.
      fill.style.width = `${Math.max(0, Math.min(1, Number(p.probability) || 0)) * 100}%`;
      return h('li', { class: i === 0 ? 'bar-row top' : 'bar-row' }, [
        h('span', { class: 'bar-label', title: p.label }, labelParts(p.label)),
        h('span', { class: 'bar-value', text: percent(p.probability) }),
        h('span', { class: 'bar-track', 'aria-hidden': 'true' }, fill),
      ]);
    });
    return h('ol', { class: 'chart', 'aria-label': 'Top labels with their probabilities' }, rows);
  }

  function resultDetails(result, cached) {
    const t = result.timings || {};
    const model = result.model || {};
    const item = (term, value) => h('div', null, [h('dt', { text: term }), h('dd', { text: value })]);
    const modelText = [model.provider, [model.name, model.version].filter(Boolean).join(' ')].filter(Boolean).join(' · ');
    return h('div', { class: 'result-meta' }, [
      h('p', { class: 'model', title: 'provider · model version' }, [
        modelText,
        cached ? h('span', { class: 'cached-mark', title: 'Answered from an earlier result for the same image and model', text: 'cached' }) : null,
      ]),
      h('dl', { class: 'timings' }, [
        item('queue wait', millis(t.queue_wait_ms)),
        item('decode', millis(t.decode_ms)),
        item('inference', millis(t.inference_ms)),
      ]),
    ]);
  }

  function progress(text) {
    return h('div', { class: 'pending' }, [
      h('span', { class: 'progress', 'aria-hidden': 'true' }, h('span', { class: 'progress-bar' })),
      h('span', { class: 'pending-text', text }),
    ]);
  }

  function bodyFor(card, status) {
    const job = card.job;
    switch (status) {
      case 'uploading':
        return [progress('Uploading…')];
      case 'rejected':
        return [h('p', { class: 'card-error', role: 'alert', text: card.rejected })];
      case 'queued': {
        const parts = [h('p', { class: 'card-note', text: 'Waiting for a worker…' })];
        const last = (job.attempt_errors || [])[0];
        if (last) {
          parts.push(h('p', { class: 'card-note', text: `Attempt ${last.attempt} failed: ${last.message}` }));
        }
        return parts;
      }
      case 'running':
        return [progress('Classifying…')];
      case 'succeeded':
        return job.result ? [chart(job.result), resultDetails(job.result, job.cached)] : [];
      case 'failed': {
        const error = job.error || {};
        return [
          h('p', { class: 'card-error', role: 'alert' }, [
            error.message || 'the classification failed',
            error.code ? h('span', { class: 'error-code', text: ` (${error.code})` }) : null,
          ]),
        ];
      }
      case 'canceled':
        return [h('p', { class: 'card-note', text: 'Canceled before it ran.' })];
      default:
        return [];
    }
  }

  function button(text, action, card, extraClass) {
    return h('button', {
      type: 'button',
      class: extraClass ? `button small ${extraClass}` : 'button small',
      text,
      disabled: card.busy !== null,
      onclick: (e) => {
        if (action === 'dismiss') removeCard(card);
        else act(card, action, e.currentTarget);
      },
    });
  }

  function actionsFor(card, status) {
    switch (status) {
      case 'failed':
        return [button('Retry', 'retry', card, 'primary'), button('Delete', 'delete', card, 'quiet')];
      case 'queued':
        return [button('Cancel', 'cancel', card), button('Delete', 'delete', card, 'quiet')];
      case 'running':
        return [button('Cancel', 'cancel', card)];
      case 'succeeded':
      case 'canceled':
        return [button('Delete', 'delete', card, 'quiet')];
      case 'rejected':
        return [button('Dismiss', 'dismiss', card, 'quiet')];
      default:
        return [];
    }
  }

  function render(card) {
    const job = card.job;
    const status = statusOf(card);
    const el = card.el;
    el.dataset.status = status;
    if (job) el.dataset.jobId = job.id;
    if (job && job.finished_at) el.dataset.finishedAt = job.finished_at;
    else delete el.dataset.finishedAt;
    el.setAttribute('aria-busy', card.busy !== null || status === 'uploading' ? 'true' : 'false');

    const name = displayName(card);
    card.name.textContent = name;
    card.name.title = name;
    card.badge.textContent = STATUS_TEXT[status] || status;
    card.badge.dataset.status = status;

    const meta = [];
    if (job) {
      const img = job.image || {};
      if (img.width && img.height) meta.push(`${img.width}×${img.height}`);
      if (img.content_type) meta.push(shortType(img.content_type));
      if (img.size) meta.push(bytes(img.size));
      if (job.max_attempts > 1 && job.attempts > 0 && status !== 'succeeded') {
        meta.push(`attempt ${job.attempts}/${job.max_attempts}`);
      }
    }
    card.meta.textContent = meta.join(' · ');

    const src = card.localUrl || (job && job.links && job.links.image && withToken(job.links.image)) || '';
    if (src && card.thumb.getAttribute('src') !== src) card.thumb.src = src;
    card.thumb.alt = '';

    const parts = bodyFor(card, status);
    if (card.actionError) {
      parts.push(h('p', { class: 'card-error action-error', role: 'alert', text: card.actionError }));
    }
    card.body.replaceChildren(...parts);
    card.actions.replaceChildren(...actionsFor(card, status));
    card.actions.hidden = card.actions.childElementCount === 0;
  }

  /** Where a job card goes: uploads in flight on top, then jobs newest first. */
  function sortKey(card) {
    return card.job ? `${stamp(card.job.created_at)} ${card.job.id}` : '\uffff';
  }

  function place(card) {
    const key = sortKey(card);
    for (const other of ui.cards.children) {
      if (other === card.el) continue;
      const otherCard = other.card;
      if (otherCard && sortKey(otherCard) < key) {
        ui.cards.insertBefore(card.el, other);
        return;
      }
    }
    ui.cards.append(card.el);
  }

  /** Adds a card for a job: at the end (`append`, for pages of the list, which come newest
   *  first) or where its creation time puts it (for jobs first seen in events). */
  function addJobCard(job, append) {
    const card = newCard();
    card.el.card = card;
    card.job = job;
    byId.set(job.id, card);
    render(card);
    if (append) ui.cards.append(card.el);
    else place(card);
    return card;
  }

  function removeCard(card) {
    card.el.remove();
    if (card.job && byId.get(card.job.id) === card) byId.delete(card.job.id);
    if (card.localUrl) URL.revokeObjectURL(card.localUrl);
    card.localUrl = null;
    refreshToolbar();
  }

  function matchesFilter(job) {
    return !ui.filter.value || job.status === ui.filter.value;
  }

  /** Whether a job belongs among the cards loaded so far (older jobs come with "Load more"). */
  function withinLoaded(job) {
    if (nextCursor === null) return true;
    let oldest = null;
    for (const card of byId.values()) {
      if (oldest === null || sortKey(card) < oldest) oldest = sortKey(card);
    }
    return oldest === null || `${stamp(job.created_at)} ${job.id}` >= oldest;
  }

  /** Shows a view of a job: updates its card, or adds one when the job is new to this page. */
  function showJob(job, fromEvent) {
    const card = byId.get(job.id);
    if (card) {
      if (isNewer(card.job, job, fromEvent)) {
        const before = card.job ? card.job.status : null;
        card.job = job;
        render(card);
        if (before !== job.status && fromEvent) announceChange(card);
      }
      return card;
    }
    if (fromEvent && !idle()) {
      // Perhaps one of our own uploads, whose response has not come yet, or a job that the list
      // being loaded will hold: wait for those rather than show the job twice or out of order.
      const held = heldJobs.get(job.id);
      if (!held || isNewer(held, job, true)) heldJobs.set(job.id, job);
      return null;
    }
    if (matchesFilter(job) && withinLoaded(job)) return addJobCard(job);
    return null;
  }

  /** Jobs seen in events while uploads were in flight, by id: the latest view of each. */
  const heldJobs = new Map();

  /** Whether no upload and no reload of the list is in flight. */
  function idle() {
    return uploadsInFlight + uploadQueue.length === 0 && !listLoading;
  }

  function releaseHeldJobs() {
    for (const [id, job] of [...heldJobs]) {
      if (byId.has(id) || idle()) {
        heldJobs.delete(id);
        showJob(job, true);
      }
    }
    refreshToolbar();
  }

  function announceChange(card) {
    const job = card.job;
    const name = displayName(card);
    if (job.status === 'succeeded' && job.result && job.result.predictions.length) {
      const top = job.result.predictions[0];
      announce(`${name}: ${top.label}, ${percent(top.probability)}`);
    } else if (job.status === 'failed') {
      announce(`${name} failed: ${(job.error && job.error.message) || 'error'}`);
    }
  }

  function refreshToolbar() {
    let failed = 0;
    for (const card of byId.values()) if (card.job && card.job.status === 'failed') failed += 1;
    if (!ui.retryAll.dataset.busy) ui.retryAll.disabled = failed === 0;
    ui.retryAll.textContent = failed > 0 ? `Retry all failed (${failed})` : 'Retry all failed';
    ui.empty.hidden = ui.cards.childElementCount > 0;
    ui.loadMore.hidden = nextCursor === null;
  }

  // ---------------------------------------------------------------------------------------------
  // Actions on jobs

  const ACTIONS = {
    retry: { method: 'POST', path: (id) => `/api/jobs/${encodeURIComponent(id)}/retry`, verb: 'Retry' },
    cancel: { method: 'POST', path: (id) => `/api/jobs/${encodeURIComponent(id)}/cancel`, verb: 'Cancel' },
    delete: { method: 'DELETE', path: (id) => `/api/jobs/${encodeURIComponent(id)}`, verb: 'Delete' },
  };

  async function act(card, action, clicked) {
    if (card.busy !== null || !card.job) return;
    const spec = ACTIONS[action];
    card.busy = action;
    card.actionError = null;
    // Disable at once, in this very event, so that a second click cannot send a second request.
    for (const b of card.actions.querySelectorAll('button')) b.disabled = true;
    if (clicked) clicked.disabled = true;
    card.el.setAttribute('aria-busy', 'true');
    try {
      const resp = await request(spec.path(card.job.id), { method: spec.method });
      if (action === 'delete' && (resp.ok || resp.status === 404)) {
        card.busy = null;
        removeCard(card);
        return;
      }
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const job = await resp.json();
      card.busy = null;
      showJob(job, false);
    } catch (e) {
      card.actionError = `${spec.verb} failed: ${e.message}`;
    } finally {
      card.busy = null;
      if (card.el.isConnected) render(card);
      refreshToolbar();
    }
  }

  async function retryAllFailed() {
    const failed = [...byId.values()].filter((c) => c.job && c.job.status === 'failed');
    if (failed.length === 0) return;
    ui.retryAll.dataset.busy = 'true';
    ui.retryAll.disabled = true;
    ui.listError.hidden = true;
    try {
      // A bulk endpoint, where the server has one; else one request per job.
      let bulk = null;
      try {
        bulk = await request('/api/jobs/retry-failed', { method: 'POST' });
      } catch (_) {
        bulk = null;
      }
      if (bulk && bulk.ok) {
        const body = await bulk.json().catch(() => null);
        if (body && Array.isArray(body.jobs)) body.jobs.forEach((job) => showJob(job, false));
      } else {
        await Promise.all(failed.map((card) => act(card, 'retry')));
      }
    } finally {
      delete ui.retryAll.dataset.busy;
      refreshToolbar();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Uploads: one request per file, a few at a time

  const uploadQueue = [];
  let uploadsInFlight = 0;

  function addFiles(files) {
    const list = [...files].filter((f) => f && f.size !== undefined);
    for (const file of list) {
      const card = newCard();
      card.el.card = card;
      card.fileName = file.name;
      card.localUrl = URL.createObjectURL(file);
      render(card);
      ui.cards.prepend(card.el);
      uploadQueue.push({ card, file });
    }
    if (list.length) {
      announce(`Uploading ${list.length} file${list.length === 1 ? '' : 's'}`);
      refreshToolbar();
      pump();
    }
  }

  function pump() {
    while (uploadsInFlight < UPLOAD_CONCURRENCY && uploadQueue.length) {
      const { card, file } = uploadQueue.shift();
      uploadsInFlight += 1;
      upload(card, file).finally(() => {
        uploadsInFlight -= 1;
        pump();
        releaseHeldJobs();
        refreshToolbar();
      });
    }
  }

  async function upload(card, file) {
    const form = new FormData();
    form.append('file', file, file.name);
    try {
      const resp = await request('/api/jobs', { method: 'POST', body: form });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const body = await resp.json();
      const job = body && Array.isArray(body.jobs) ? body.jobs[0] : null;
      if (!job) throw new Error('the server accepted the file but named no job');
      if (!card.el.isConnected) return;
      // The job's events may have come first and made a card of their own: keep this one.
      const other = byId.get(job.id);
      if (other && other !== card) {
        card.job = other.job;
        other.el.remove();
      }
      byId.set(job.id, card);
      if (isNewer(card.job, job, false)) card.job = job;
      render(card);
    } catch (e) {
      card.rejected = e.message;
      render(card);
      announce(`${card.fileName}: ${e.message}`);
    }
    refreshToolbar();
  }

  // ---------------------------------------------------------------------------------------------
  // The job list

  async function loadPage({ reset }) {
    if (reset) {
      listGeneration += 1;
      nextCursor = null;
      listLoading = true;
      for (const card of [...byId.values()]) removeCard(card);
    }
    const generation = listGeneration;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (ui.filter.value) params.set('status', ui.filter.value);
    if (!reset && nextCursor) params.set('cursor', nextCursor);
    ui.loadMore.disabled = true;
    ui.cards.setAttribute('aria-busy', 'true');
    try {
      const resp = await request(`/api/jobs?${params}`);
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const body = await resp.json();
      if (generation !== listGeneration) return;
      nextCursor = body.next_cursor || null;
      for (const job of body.jobs || []) {
        if (byId.has(job.id)) showJob(job, false);
        else addJobCard(job, true);
      }
      ui.listError.hidden = true;
    } catch (e) {
      if (generation !== listGeneration) return;
      ui.listError.textContent = `The jobs could not be loaded: ${e.message}`;
      ui.listError.hidden = false;
    } finally {
      if (generation === listGeneration) {
        listLoading = false;
        ui.loadMore.disabled = false;
        ui.cards.setAttribute('aria-busy', 'false');
        releaseHeldJobs();
      }
    }
  }

  /** After a lost connection: fetch the newest jobs again so that nothing stays stale. */
  async function refreshFirstPage() {
    const generation = listGeneration;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (ui.filter.value) params.set('status', ui.filter.value);
    try {
      const resp = await request(`/api/jobs?${params}`);
      if (!resp.ok) return;
      const body = await resp.json();
      if (generation !== listGeneration) return;
      const wasEmpty = byId.size === 0;
      for (const job of body.jobs || []) {
        if (byId.has(job.id)) showJob(job, false);
        else addJobCard(job);
      }
      if (wasEmpty) nextCursor = body.next_cursor || null;
      refreshToolbar();
    } catch (_) {
      // The event stream will try again.
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Live updates

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connectionText.textContent = text;
  }

  function onEvent(message) {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    if (!data || typeof data !== 'object') return;
    if (typeof data.seq === 'number' && data.seq > lastSeq) lastSeq = data.seq;
    if (data.kind === 'deleted' || !data.job) {
      heldJobs.delete(data.job_id);
      const card = byId.get(data.job_id);
      if (card) removeCard(card);
      return;
    }
    showJob(data.job, true);
    refreshToolbar();
  }

  let stale = false;
  let events = null; // the open EventSource

  function connect() {
    // A stream opened by hand resumes after the last event seen; EventSource's own reconnects
    // send Last-Event-ID, which the server prefers.
    if (events) events.close();
    const url = lastSeq > 0 ? `/api/events?after=${lastSeq}` : '/api/events';
    const source = new EventSource(withToken(url));
    events = source;
    source.addEventListener('open', () => {
      setConnection('live', 'Live');
      if (stale) {
        stale = false;
        refreshFirstPage();
      }
    });
    source.addEventListener('error', () => {
      stale = true;
      if (source.readyState === EventSource.CLOSED) {
        setConnection('offline', 'Offline, retrying…');
        source.close();
        setTimeout(() => {
          if (events === source) connect();
        }, RECONNECT_MS);
      } else {
        setConnection('reconnecting', 'Reconnecting…');
      }
    });
    for (const kind of EVENT_KINDS) source.addEventListener(kind, onEvent);
    source.addEventListener('message', onEvent);
  }

  // ---------------------------------------------------------------------------------------------
  // Page wiring

  function wire() {
    ui.pick.addEventListener('click', () => ui.input.click());
    ui.input.addEventListener('change', () => {
      addFiles(ui.input.files);
      ui.input.value = '';
    });

    // Files can be dropped anywhere on the page; the drop zone lights up while they are dragged.
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
    window.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      ui.dropzone.classList.add('dragging');
    });
    window.addEventListener('dragleave', (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) ui.dropzone.classList.remove('dragging');
    });
    window.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    window.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      ui.dropzone.classList.remove('dragging');
      addFiles(e.dataTransfer.files);
    });
    document.addEventListener('paste', (e) => {
      const files = e.clipboardData ? [...e.clipboardData.files] : [];
      if (files.length) {
        e.preventDefault();
        addFiles(files);
      }
    });

    ui.filter.addEventListener('change', () => loadPage({ reset: true }));
    ui.loadMore.addEventListener('click', () => loadPage({ reset: false }));
    ui.retryAll.addEventListener('click', retryAllFailed);
  }

  // ---------------------------------------------------------------------------------------------
  // Signing in

  let started = false;

  /** Shows the sign-in form instead of the jobs (the server needs a token it does not have). */
  function askForToken(message, hadToken) {
    if (events) {
      events.close();
      events = null;
    }
    started = false;
    setToken('');
    for (const card of [...byId.values()]) removeCard(card);
    ui.cards.replaceChildren();
    ui.app.hidden = true;
    ui.signOut.hidden = true;
    ui.login.hidden = false;
    setConnection('offline', 'Signed out');
    ui.loginError.textContent = hadToken ? message : '';
    ui.loginError.hidden = !hadToken;
    ui.tokenInput.focus();
  }

  /** Shows the jobs of the current token (or of everyone, on an open server). */
  function start() {
    if (started) return;
    started = true;
    ui.login.hidden = true;
    ui.app.hidden = false;
    ui.signOut.hidden = !currentToken();
    lastSeq = 0;
    connect();
    loadPage({ reset: true });
  }

  /** Asks the server whether it serves this tab as it is (no token, or the stored one). */
  async function probe() {
    try {
      const resp = await request('/api/jobs?limit=1');
      if (resp.status !== 401) start();
    } catch (_) {
      start(); // unreachable: the page shows it, and reconnects
    }
  }

  ui.loginForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const value = ui.tokenInput.value.trim();
    if (!value) return;
    setToken(value);
    ui.loginError.hidden = true;
    const resp = await request('/api/jobs?limit=1').catch((err) => ({ status: 0, err }));
    if (resp.status === 401) return; // askForToken showed why
    ui.tokenInput.value = '';
    start();
  });
  ui.signOut.addEventListener('click', () => askForToken('', false));

  wire();
  probe();
})();
