// imgclass web page: a queue overview, uploads with their progress, the job list with search,
// filters, export and bulk actions, and a detail view per job (#/jobs/{id}), all live over
// server-sent events. Plain DOM code: every piece of data is put on the page as text
// (textContent, text nodes), never parsed as markup.
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
    waiting: 'waiting to upload',
    uploading: 'uploading…',
    rejected: 'refused',
    queued: 'queued',
    running: 'running…',
    succeeded: 'succeeded',
    failed: 'failed',
    canceled: 'canceled',
  };
  const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'];

  const TOKEN_KEY = 'imgclass-token';
  const $ = (id) => document.getElementById(id);
  const ui = {
    modelPick: $('model-pick'),
    modelSelect: $('model-select'),
    app: $('app'),
    login: $('login'),
    loginForm: $('login-form'),
    tokenInput: $('token-input'),
    loginError: $('login-error'),
    signOut: $('sign-out'),
    cards: $('cards'),
    empty: $('empty'),
    loadMore: $('load-more'),
    tabs: $('tabs'),
    retryAll: $('retry-all'),
    cancelAll: $('cancel-all'),
    deleteFinished: $('delete-finished'),
    exportCsv: $('export-csv'),
    exportJson: $('export-json'),
    matchCount: $('match-count'),
    listError: $('list-error'),
    connection: $('connection'),
    connectionText: $('connection-text'),
    dropzone: $('dropzone'),
    pick: $('pick'),
    input: $('file-input'),
    announcer: $('announcer'),
    search: $('search'),
    q: $('q'),
    label: $('label'),
    errorCode: $('error-code'),
    since: $('since'),
    until: $('until'),
    searchReset: $('search-reset'),
    overview: $('overview'),
    lastMinute: $('last-minute'),
    minutes: $('minutes'),
    oldestAge: $('oldest-age'),
    queueNote: $('queue-note'),
    rateLimit: $('rate-limit'),
    rateNote: $('rate-note'),
    batch: $('batch'),
    batchText: $('batch-text'),
    batchProgress: $('batch-progress'),
    batchNote: $('batch-note'),
    batchClear: $('batch-clear'),
    uploadSection: document.querySelector('.upload'),
    jobs: $('jobs'),
    jobsTitle: $('jobs-title'),
    detail: $('detail'),
    detailBody: $('detail-body'),
  };

  /** Cards of jobs by job id. Cards of uploads still in flight (or refused) are not in here. */
  const byId = new Map();
  let nextCursor = null;
  let listGeneration = 0;
  let listLoading = false; // a first page (on load, on a new filter) is on its way
  let lastSeq = 0;
  /** What the list shows: a status and the search's filters (API parameter names). */
  const view = { status: '', q: '', label: '', error_code: '', since: '', until: '' };
  /** How many jobs match the list's filters (from the last list answer). */
  let matchTotal = null;
  /** The last `/api/stats` answer and when it came (ms). */
  let stats = null;
  let statsAt = 0;

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

  /** A duration in seconds as people read it: "45 s", "3 min 05 s", "2 h 10 min". */
  function duration(seconds) {
    const s = Math.max(0, Math.round(Number(seconds) || 0));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
  }

  /** A time of day, HH:MM:SS in the page's time zone. */
  function clock(time) {
    const d = new Date(time);
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour12: false });
  }

  /** A date and time, for the detail view. */
  function dateTime(time) {
    if (!time) return '—';
    const d = new Date(time);
    return Number.isNaN(d.getTime()) ? String(time) : `${d.toLocaleString([], { hour12: false })}`;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? '' : 's'}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Cards

  function newCard() {
    const thumb = h('img', { class: 'thumb', alt: '', decoding: 'async', loading: 'lazy' });
    const thumbLink = h('a', { class: 'thumb-link', tabIndex: -1, 'aria-hidden': 'true' }, thumb);
    const thumbBox = h('div', { class: 'thumb-box' }, [
      thumbLink,
      h('span', { class: 'thumb-fallback', text: 'no preview', 'aria-hidden': 'true' }),
    ]);
    thumb.addEventListener('error', () => thumbBox.classList.add('no-image'));
    thumb.addEventListener('load', () => thumbBox.classList.remove('no-image'));
    const nameLink = h('a', { class: 'card-link' });
    const name = h('h3', { class: 'card-name' }, nameLink);
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
      el, thumb, thumbLink, thumbBox, name, nameLink, badge, meta, body, actions,
      job: null, // the latest view of the job, once it exists
      fileName: null, // the local file's name, for uploads
      localUrl: null, // object URL of the local file, for uploads
      upload: null, // the batch item of an upload (its state and progress)
      rejected: null, // the server's message when it refused the upload
      busy: null, // the action in flight: 'retry', 'cancel' or 'delete'
      actionError: null, // the message of the last failed action
      reason: null, // the element saying why a queued job waits
    };
  }

  function statusOf(card) {
    if (card.job) return card.job.status;
    if (card.rejected !== null) return 'rejected';
    return card.upload && card.upload.state === 'waiting' ? 'waiting' : 'uploading';
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
    // The job's model is the result's; shown on every card below (see `modelNote`).
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

  /** The model a job names, when the node serves more than one. */
  function modelNote(job) {
    if (!job.model || !models || models.size < 2) return null;
    return h('p', { class: 'card-note model-note', text: `Model: ${job.model}` });
  }

  function progress(text) {
    return h('div', { class: 'pending' }, [
      h('span', { class: 'progress', 'aria-hidden': 'true' }, h('span', { class: 'progress-bar' })),
      h('span', { class: 'pending-text', text }),
    ]);
  }

  /** An upload's determinate progress: a bar and "Uploading 45 %". */
  function uploadProgress(card) {
    const fill = h('span', { class: 'upload-fill' });
    const text = h('span', { class: 'pending-text' });
    card.uploadFill = fill;
    card.uploadText = text;
    updateUploadProgress(card);
    return h('div', { class: 'pending' }, [
      h('span', { class: 'progress determinate', 'aria-hidden': 'true' }, fill),
      text,
    ]);
  }

  function updateUploadProgress(card) {
    if (!card.upload || !card.uploadFill) return;
    const pct = Math.floor((card.upload.sent || 0) * 100);
    card.uploadFill.style.width = `${pct}%`;
    card.uploadText.textContent = `Uploading ${pct} %`;
    card.el.dataset.progress = String(pct);
  }

  /** The models (GET /api/models), by name; null until they are known. */
  let models = null;

  async function fetchModels() {
    try {
      const resp = await request('/api/models');
      if (!resp.ok) return;
      const body = await resp.json();
      models = new Map(body.models.map((m) => [m.name, m]));
      const names = body.models.map((m) => m.name);
      if (!names.includes(body.default_model)) names.unshift(body.default_model);
      // A choice only when there is one to make.
      ui.modelPick.hidden = names.length < 2;
      const chosen = ui.modelSelect.value || body.default_model;
      ui.modelSelect.replaceChildren(...names.map((n) => h('option', {
        value: n,
        text: n === body.default_model ? `${n} (default)` : n,
      })));
      ui.modelSelect.value = names.includes(chosen) ? chosen : body.default_model;
      refreshReasons();
    } catch (_) {
      // The page works without the list: jobs use the default model.
    }
  }

  /** Whether no node serves a job's model now (its jobs wait until one does). */
  function unserved(job) {
    const m = models && models.get(job.model);
    return Boolean(m) && m.nodes.length === 0;
  }

  /** Why a queued job waits, and where it can be known, its place in the line. */
  function waitReason(job) {
    if (unserved(job)) return `Waiting: no worker serves the model ${job.model}`;
    const now = Date.now();
    const runAt = Date.parse(job.run_at);
    const last = (job.attempt_errors || [])[0];
    if (runAt > now + 250) {
      const after = last ? ` after attempt ${last.attempt} failed` : '';
      return `Retry backoff${after}: runs again at ${clock(runAt)}`;
    }
    const parts = [];
    const rate = stats && stats.rate_limit;
    if (rate && rate.remaining === 0 && rate.next_start_in_s !== null) {
      const left = Math.max(0, rate.next_start_in_s - (now - statsAt) / 1000);
      parts.push(`Waiting for the rate limit (${rate.jobs} per ${duration(rate.per_s)}): next start in ${duration(Math.ceil(left))}`);
    } else if (stats && stats.counts.running > 0) {
      parts.push(`Waiting for a free worker (${stats.counts.running} running)`);
    } else {
      parts.push('Waiting for a worker');
    }
    const place = queuePlace(job);
    if (place) parts.push(`${place} in line`);
    return parts.join(' · ');
  }

  /** The place of a due queued job among all queued jobs, when every queued job is on the page
   *  (the order is the workers': priority first, then the oldest). */
  function queuePlace(job) {
    if (!stats) return null;
    const queued = [...byId.values()].map((c) => c.job).filter((j) => j && j.status === 'queued');
    if (queued.length !== stats.counts.queued) return null;
    const now = Date.now();
    const due = queued.filter((j) => Date.parse(j.run_at) <= now + 250);
    // Jobs stored in one commit share their times; their ids (UUID v7) follow their order.
    const order = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
    due.sort((a, b) => (b.priority - a.priority)
      || order(stamp(a.run_at), stamp(b.run_at))
      || order(stamp(a.created_at), stamp(b.created_at))
      || order(a.id, b.id));
    const i = due.findIndex((j) => j.id === job.id);
    return i < 0 ? null : `#${i + 1}`;
  }

  /** The earlier attempts of a job, latest first. */
  function attemptList(job, limit) {
    const errors = job.attempt_errors || [];
    const items = errors.slice(0, limit || errors.length).map((e) => h('li', null, [
      h('span', { class: 'attempt-no', text: `Attempt ${e.attempt}` }),
      ` ${e.message} `,
      h('span', { class: 'error-code', text: `(${e.code})` }),
      h('span', { class: 'attempt-at', text: ` at ${clock(e.at)}` }),
    ]));
    return h('ol', { class: 'attempts' }, items);
  }

  function bodyFor(card, status) {
    const job = card.job;
    switch (status) {
      case 'waiting':
        return [h('p', { class: 'card-note', text: `Waiting to upload (at most ${UPLOAD_CONCURRENCY} at a time)` })];
      case 'uploading':
        return [uploadProgress(card)];
      case 'rejected':
        return [h('p', { class: 'card-error', role: 'alert', text: card.rejected })];
      case 'queued': {
        card.reason = h('p', { class: 'card-note wait-reason', text: waitReason(job) });
        const parts = [card.reason];
        const note = modelNote(job);
        if (note) parts.push(note);
        if ((job.attempt_errors || []).length) parts.push(attemptList(job, 3));
        return parts;
      }
      case 'running': {
        const parts = [progress(job.attempts > 1 ? `Classifying (attempt ${job.attempts} of ${job.max_attempts})…` : 'Classifying…')];
        if ((job.attempt_errors || []).length) parts.push(attemptList(job, 3));
        return parts;
      }
      case 'succeeded':
        return job.result ? [chart(job.result), resultDetails(job.result, job.cached)] : [];
      case 'failed': {
        const error = job.error || {};
        const parts = [
          h('p', { class: 'card-error', role: 'alert' }, [
            error.message || 'the classification failed',
            error.code ? h('span', { class: 'error-code', text: ` (${error.code})` }) : null,
          ]),
        ];
        const errors = job.attempt_errors || [];
        if (errors.length > 1) {
          parts.push(h('details', { class: 'earlier' }, [
            h('summary', { text: `${plural(errors.length, 'failed attempt')} in all` }),
            attemptList(job),
          ]));
        }
        return parts;
      }
      case 'canceled':
        return [h('p', { class: 'card-note', text: job.started_at ? `Canceled while it ran (attempt ${job.attempts}); its result was dropped.` : 'Canceled before it ran.' })];
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
      'aria-label': card.job || card.fileName ? `${text} ${displayName(card)}` : null,
      onclick: (e) => {
        if (action === 'dismiss') dismiss(card);
        else act(card, action, e.currentTarget);
      },
    });
  }

  /** The actions the job's state allows (its links say which), and Delete unless it runs. */
  function actionsFor(card, status) {
    if (status === 'rejected') return [button('Dismiss', 'dismiss', card, 'quiet')];
    const job = card.job;
    if (!job) return [];
    const links = job.links || {};
    const out = [];
    if (links.retry) out.push(button('Retry', 'retry', card, 'primary'));
    if (links.cancel) out.push(button('Cancel', 'cancel', card));
    if (status !== 'running') out.push(button('Delete', 'delete', card, 'quiet'));
    return out;
  }

  function jobHref(id) {
    return `#/jobs/${encodeURIComponent(id)}`;
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
    card.nameLink.textContent = name;
    card.name.title = name;
    if (job) {
      card.nameLink.href = jobHref(job.id);
      card.thumbLink.href = jobHref(job.id);
    } else {
      card.nameLink.removeAttribute('href');
      card.thumbLink.removeAttribute('href');
    }
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

    card.reason = null;
    card.uploadFill = null;
    const open = card.body.querySelector('details.earlier[open]') !== null;
    const parts = bodyFor(card, status);
    if (card.actionError) {
      parts.push(h('p', { class: 'card-error action-error', role: 'alert', text: card.actionError }));
    }
    card.body.replaceChildren(...parts);
    if (open) {
      const details = card.body.querySelector('details.earlier');
      if (details) details.open = true;
    }
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

  /** Takes a refused upload off the page. */
  function dismiss(card) {
    card.el.remove();
    if (card.upload) {
      card.upload.dismissed = true;
      if (card.localUrl) URL.revokeObjectURL(card.localUrl);
      card.localUrl = null;
    }
    renderBatch();
    refreshToolbar();
  }

  /** Whether any filter (a status or the search) narrows the list. */
  function filtered() {
    return Object.values(view).some(Boolean);
  }

  /** Whether a job belongs in the list as it is filtered (the API's filters, applied here to
   *  the jobs that change while the page is open). */
  function matchesFilter(job) {
    if (view.status && job.status !== view.status) return false;
    if (view.q && !String(job.file_name || '').toLowerCase().includes(view.q.toLowerCase())) return false;
    if (view.label) {
      const top = job.result && job.result.predictions && job.result.predictions[0];
      if (!top || !String(top.label).toLowerCase().includes(view.label.toLowerCase())) return false;
    }
    if (view.error_code && !(job.error && job.error.code === view.error_code)) return false;
    if (view.since && Date.parse(job.created_at) < Date.parse(view.since)) return false;
    if (view.until && Date.parse(job.created_at) >= Date.parse(view.until)) return false;
    return true;
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

  /** Shows a view of a job: updates its card (or takes it away when it no longer matches the
   *  filters), or adds one when the job is new to this list. */
  function showJob(job, fromEvent) {
    trackBatch(job);
    const card = byId.get(job.id);
    if (card) {
      if (isNewer(card.job, job, fromEvent)) {
        const before = card.job ? card.job.status : null;
        card.job = job;
        if (!matchesFilter(job)) {
          removeCard(card);
          if (matchTotal !== null) matchTotal = Math.max(0, matchTotal - 1);
          return null;
        }
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
    if (matchesFilter(job) && withinLoaded(job)) {
      if (matchTotal !== null) matchTotal += 1;
      return addJobCard(job);
    }
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

  /** The counts on the tabs, the bulk buttons and the list's match count. */
  function refreshToolbar() {
    const counts = stats ? stats.counts : null;
    for (const el of ui.tabs.querySelectorAll('.count')) {
      const which = el.dataset.count;
      let n = null;
      if (counts) n = which === 'all' ? STATUSES.reduce((s, k) => s + counts[k], 0) : counts[which];
      el.textContent = n === null ? '' : String(n);
    }
    const failed = counts ? counts.failed : 0;
    const queued = counts ? counts.queued : 0;
    const finished = counts ? counts.succeeded + counts.failed + counts.canceled : 0;
    if (!ui.retryAll.dataset.busy) ui.retryAll.disabled = failed === 0;
    ui.retryAll.textContent = failed > 0 ? `Retry all failed (${failed})` : 'Retry all failed';
    if (!ui.cancelAll.dataset.busy) ui.cancelAll.disabled = queued === 0;
    ui.cancelAll.textContent = queued > 0 ? `Cancel all queued (${queued})` : 'Cancel all queued';
    if (!ui.deleteFinished.dataset.busy) ui.deleteFinished.disabled = finished === 0;
    ui.deleteFinished.textContent = finished > 0 ? `Delete finished (${finished})` : 'Delete finished';

    const searching = view.q || view.label || view.error_code || view.since || view.until;
    let total = matchTotal;
    // Without a search, the live counts are the list's totals.
    if (!searching && counts) total = view.status ? counts[view.status] : STATUSES.reduce((s, k) => s + counts[k], 0);
    ui.matchCount.textContent = total === null ? '' : `${plural(total, searching ? 'matching job' : 'job')}${view.status ? ` ${view.status}` : ''}`;
    ui.empty.hidden = ui.cards.querySelector('.card:not([hidden])') !== null;
    ui.empty.textContent = filtered() ? 'No job matches.' : 'No jobs yet. Upload an image to start.';
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

  /** Runs a bulk action: one request that acts on the jobs in the database. */
  async function bulk(buttonEl, url, done) {
    buttonEl.dataset.busy = 'true';
    buttonEl.disabled = true;
    ui.listError.hidden = true;
    try {
      const resp = await request(url, { method: 'POST' });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const body = await resp.json();
      done(body);
    } catch (e) {
      ui.listError.textContent = e.message;
      ui.listError.hidden = false;
      throw e;
    } finally {
      delete buttonEl.dataset.busy;
      refreshStats();
      refreshToolbar();
    }
  }

  async function retryAllFailed() {
    try {
      await bulk(ui.retryAll, '/api/jobs/retry-failed', (body) => {
        if (Array.isArray(body.jobs)) body.jobs.forEach((job) => showJob(job, false));
        announce(`${plural(body.count || 0, 'failed job')} queued again`);
      });
    } catch (_) {
      // A server without the bulk route: retry each failed job shown, one request each.
      const failed = [...byId.values()].filter((c) => c.job && c.job.status === 'failed');
      if (failed.length === 0) return;
      ui.listError.hidden = true;
      await Promise.all(failed.map((card) => act(card, 'retry')));
    }
  }

  async function cancelAllQueued() {
    const n = stats ? stats.counts.queued : 0;
    if (!window.confirm(`Cancel all ${plural(n, 'queued job')}? Jobs already running go on.`)) return;
    await bulk(ui.cancelAll, '/api/jobs/cancel-queued', (body) => {
      announce(`${plural(body.count, 'job')} canceled`);
    }).catch(() => {});
  }

  async function deleteFinished() {
    const c = stats ? stats.counts : { succeeded: 0, failed: 0, canceled: 0 };
    const n = c.succeeded + c.failed + c.canceled;
    const text = `Delete ${plural(n, 'finished job')} (${c.succeeded} succeeded, ${c.failed} failed, ${c.canceled} canceled) and their images? This cannot be undone.`;
    if (!window.confirm(text)) return;
    await bulk(ui.deleteFinished, '/api/jobs/delete-finished', (body) => {
      announce(`${plural(body.count, 'job')} deleted`);
    }).catch(() => {});
  }

  // ---------------------------------------------------------------------------------------------
  // Uploads: one request per file, a few at a time, each with its progress

  const uploadQueue = [];
  let uploadsInFlight = 0;
  /** The files added since the batch was last cleared: each with its state and, once it is
   *  a job, the job's status. */
  let batchItems = [];
  const batchByJob = new Map();

  function addFiles(files) {
    const list = [...files].filter((f) => f && f.size !== undefined);
    if (list.length && batchItems.length && batchDone()) clearBatch();
    for (const file of list) {
      const card = newCard();
      card.el.card = card;
      card.fileName = file.name;
      card.localUrl = URL.createObjectURL(file);
      card.upload = { name: file.name, state: 'waiting', sent: 0, jobId: null, status: null, dismissed: false };
      batchItems.push(card.upload);
      render(card);
      card.el.hidden = filtered();
      ui.cards.prepend(card.el);
      uploadQueue.push({ card, file });
    }
    if (list.length) {
      announce(`Uploading ${plural(list.length, 'file')}`);
      renderBatch();
      refreshToolbar();
      pump();
    }
  }

  function pump() {
    while (uploadsInFlight < UPLOAD_CONCURRENCY && uploadQueue.length) {
      const { card, file } = uploadQueue.shift();
      uploadsInFlight += 1;
      card.upload.state = 'uploading';
      render(card);
      upload(card, file).finally(() => {
        uploadsInFlight -= 1;
        pump();
        releaseHeldJobs();
        renderBatch();
        refreshToolbar();
      });
      renderBatch();
    }
  }

  /** POSTs one file with XMLHttpRequest, whose upload reports its progress. */
  function send(file, onProgress) {
    return new Promise((resolve) => {
      const form = new FormData();
      form.append('file', file, file.name);
      if (!ui.modelPick.hidden && ui.modelSelect.value) form.append('model', ui.modelSelect.value);
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/jobs');
      xhr.setRequestHeader('accept', 'application/json');
      const t = currentToken();
      if (t) xhr.setRequestHeader('authorization', `Bearer ${t}`);
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable && e.total > 0) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener('load', () => resolve({ status: xhr.status, text: xhr.responseText }));
      xhr.addEventListener('error', () => resolve({ status: 0, text: '' }));
      xhr.addEventListener('abort', () => resolve({ status: 0, text: '' }));
      xhr.send(form);
    });
  }

  function messageOf(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch (_) {
      // Not JSON.
    }
    return status === 0 ? 'the server could not be reached' : `the server answered ${status}`;
  }

  async function upload(card, file) {
    const item = card.upload;
    try {
      const resp = await send(file, (fraction) => {
        item.sent = fraction;
        updateUploadProgress(card);
        scheduleBatch();
      });
      if (resp.status === 401) {
        askForToken(messageOf(resp.status, resp.text), Boolean(currentToken()));
        return;
      }
      if (resp.status < 200 || resp.status >= 300) throw new Error(messageOf(resp.status, resp.text));
      let body = null;
      try {
        body = JSON.parse(resp.text);
      } catch (_) {
        body = null;
      }
      const job = body && Array.isArray(body.jobs) ? body.jobs[0] : null;
      if (!job) throw new Error('the server accepted the file but named no job');
      item.sent = 1;
      item.state = 'uploaded';
      item.jobId = job.id;
      batchByJob.set(job.id, item);
      if (!item.status || isNewer({ updated_at: item.updatedAt, status: item.status }, job, false)) {
        item.status = job.status;
        item.updatedAt = job.updated_at;
      }
      if (!card.el.isConnected) return;
      // The job's events may have come first and made a card of their own: keep this one.
      const other = byId.get(job.id);
      if (other && other !== card) {
        card.job = other.job;
        other.el.remove();
      }
      if (isNewer(card.job, job, false)) card.job = job;
      if (matchesFilter(card.job)) {
        byId.set(job.id, card);
        card.el.hidden = false;
        render(card);
      } else {
        // The list is filtered and the new job is not in it: the batch still follows it.
        card.el.remove();
        if (card.localUrl) URL.revokeObjectURL(card.localUrl);
        card.localUrl = null;
      }
    } catch (e) {
      item.state = 'refused';
      item.message = e.message;
      card.rejected = e.message;
      render(card);
      announce(`${card.fileName}: ${e.message}`);
    }
    refreshToolbar();
  }

  /** Follows the jobs of the batch, whether or not their cards are shown. */
  function trackBatch(job) {
    const item = batchByJob.get(job.id);
    if (!item) return;
    if (item.status && !isNewer({ updated_at: item.updatedAt, status: item.status }, job, true)) return;
    item.status = job.status;
    item.updatedAt = job.updated_at;
    scheduleBatch();
  }

  function batchCounts() {
    const c = { total: batchItems.length, waiting: 0, uploading: 0, refused: 0, queued: 0, running: 0, succeeded: 0, failed: 0, canceled: 0, deleted: 0 };
    for (const item of batchItems) {
      if (item.state === 'waiting' || item.state === 'uploading' || item.state === 'refused') c[item.state] += 1;
      else if (item.status) c[item.status] += 1;
      else c.queued += 1;
    }
    return c;
  }

  function batchDone() {
    const c = batchCounts();
    return c.succeeded + c.failed + c.canceled + c.refused + c.deleted === c.total;
  }

  let batchTimer = null;
  function scheduleBatch() {
    if (batchTimer === null) {
      batchTimer = setTimeout(() => {
        batchTimer = null;
        renderBatch();
      }, 100);
    }
  }

  /** The batch's progress bar: "12 of 30 classified, 2 failed". */
  function renderBatch() {
    if (batchItems.length === 0) {
      ui.batch.hidden = true;
      return;
    }
    const c = batchCounts();
    const done = c.succeeded + c.failed + c.canceled + c.refused + c.deleted;
    ui.batch.hidden = false;
    const failed = c.failed + c.refused;
    const extra = [];
    if (failed) extra.push(`${failed} failed`);
    if (c.canceled) extra.push(`${c.canceled} canceled`);
    ui.batchText.textContent = `${c.succeeded} of ${c.total} classified${extra.length ? `, ${extra.join(', ')}` : ''}`;
    ui.batchProgress.max = c.total;
    ui.batchProgress.value = done;
    ui.batch.dataset.done = String(done === c.total);
    const notes = [];
    if (c.uploading) notes.push(`${c.uploading} uploading (at most ${UPLOAD_CONCURRENCY} at a time)`);
    if (c.waiting) notes.push(`${c.waiting} waiting to upload`);
    if (c.queued) notes.push(`${c.queued} queued`);
    if (c.running) notes.push(`${c.running} running`);
    if (c.refused) notes.push(`${c.refused} refused by the server (not stored)`);
    ui.batchNote.textContent = notes.join(' · ');
    ui.batchClear.hidden = done !== c.total;
  }

  function clearBatch() {
    batchItems = [];
    batchByJob.clear();
    for (const el of [...ui.cards.querySelectorAll('.card[data-status="rejected"]')]) dismiss(el.card);
    renderBatch();
  }

  // ---------------------------------------------------------------------------------------------
  // The job list

  /** The list's filters as API query parameters. */
  function filterParams() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(view)) if (value) params.set(key, value);
    return params;
  }

  function updateExportLinks() {
    for (const [el, format] of [[ui.exportCsv, 'csv'], [ui.exportJson, 'json']]) {
      const params = filterParams();
      params.set('format', format);
      el.href = withToken(`/api/jobs/export?${params}`);
    }
  }

  async function loadPage({ reset }) {
    if (reset) {
      listGeneration += 1;
      nextCursor = null;
      listLoading = true;
      matchTotal = null;
      for (const card of [...byId.values()]) removeCard(card);
      // Uploads in flight and refused ones are shown only in the unfiltered list.
      for (const el of ui.cards.querySelectorAll('.card')) el.hidden = filtered();
      updateExportLinks();
    }
    const generation = listGeneration;
    const params = filterParams();
    params.set('limit', String(PAGE_SIZE));
    if (!reset && nextCursor) params.set('cursor', nextCursor);
    ui.loadMore.disabled = true;
    ui.cards.setAttribute('aria-busy', 'true');
    try {
      const resp = await request(`/api/jobs?${params}`);
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const body = await resp.json();
      if (generation !== listGeneration) return;
      nextCursor = body.next_cursor || null;
      if (typeof body.total === 'number') matchTotal = body.total;
      for (const job of body.jobs || []) {
        trackBatch(job);
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
    const params = filterParams();
    params.set('limit', String(PAGE_SIZE));
    try {
      const resp = await request(`/api/jobs?${params}`);
      if (!resp.ok) return;
      const body = await resp.json();
      if (generation !== listGeneration) return;
      const wasEmpty = byId.size === 0;
      if (typeof body.total === 'number') matchTotal = body.total;
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

  function setStatus(status) {
    view.status = status;
    for (const tab of ui.tabs.querySelectorAll('.tab')) {
      tab.setAttribute('aria-pressed', String(tab.dataset.status === status));
    }
    loadPage({ reset: true });
  }

  /** A datetime-local value (the page's time zone) as an RFC 3339 time. */
  function rfc3339(local) {
    if (!local) return '';
    const d = new Date(local);
    return Number.isNaN(d.getTime()) ? '' : d.toISOString();
  }

  function applySearch() {
    view.q = ui.q.value.trim();
    view.label = ui.label.value.trim();
    view.error_code = ui.errorCode.value;
    view.since = rfc3339(ui.since.value);
    view.until = rfc3339(ui.until.value);
    loadPage({ reset: true });
  }

  /** The error codes for the search's menu, from the API's own description. */
  async function loadErrorCodes() {
    try {
      const resp = await fetch('/api/openapi.json');
      if (!resp.ok) return;
      const doc = await resp.json();
      const codes = (((doc.components || {}).schemas || {}).ErrorCode || {}).enum || [];
      for (const code of codes) ui.errorCode.append(h('option', { value: code, text: code }));
    } catch (_) {
      // The menu keeps "any".
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The queue overview: counts, throughput, the oldest queued job, the rate limit

  let statsTimer = null;
  let statsInFlight = false;
  let statsAgain = false;
  let lastStatsFetch = 0;

  /** Fetches `/api/stats` soon: at once when it has not for a while, else batched, so that a
   *  burst of events costs one request. */
  function refreshStats() {
    if (statsTimer !== null) return;
    const wait = Math.max(150, 1000 - (Date.now() - lastStatsFetch));
    statsTimer = setTimeout(fetchStats, wait);
  }

  async function fetchStats() {
    statsTimer = null;
    if (statsInFlight) {
      statsAgain = true;
      return;
    }
    statsInFlight = true;
    lastStatsFetch = Date.now();
    try {
      const resp = await request('/api/stats');
      if (resp.ok) {
        stats = await resp.json();
        statsAt = Date.now();
        renderOverview();
        refreshToolbar();
        refreshReasons();
      }
    } catch (_) {
      // Shown by the connection state; the next event tries again.
    } finally {
      statsInFlight = false;
      if (statsAgain) {
        statsAgain = false;
        refreshStats();
      }
    }
  }

  function renderOverview() {
    if (!stats) return;
    const last = stats.finished_last_minute_by || { succeeded: 0, failed: 0, canceled: 0 };
    ui.lastMinute.textContent = `${stats.finished_last_minute} in the last minute`;
    ui.lastMinute.title = `${last.succeeded} succeeded, ${last.failed} failed, ${last.canceled} canceled`;
    const minutes = stats.finished_per_minute || [];
    const max = Math.max(1, ...minutes.map((m) => m.succeeded + m.failed + m.canceled));
    const items = minutes.map((m, i) => {
      const ago = minutes.length - 1 - i;
      const when = ago === 0 ? 'Last minute' : `${ago} to ${ago + 1} minutes ago`;
      const total = m.succeeded + m.failed + m.canceled;
      const stack = h('span', { class: 'stack', 'aria-hidden': 'true' });
      for (const [key, cls] of [['canceled', 'neutral'], ['failed', 'err'], ['succeeded', 'ok']]) {
        if (!m[key]) continue;
        const seg = h('span', { class: `seg ${cls}` });
        seg.style.height = `${(m[key] / max) * 100}%`;
        stack.append(seg);
      }
      return h('li', { class: 'minute', title: `${when}: ${total}` }, [
        stack,
        h('span', { class: 'visually-hidden', text: `${when}: ${m.succeeded} succeeded, ${m.failed} failed, ${m.canceled} canceled` }),
      ]);
    });
    ui.minutes.replaceChildren(...items);
    ui.minutes.dataset.values = minutes.map((m) => `${m.succeeded}/${m.failed}/${m.canceled}`).join(' ');
    ui.queueNote.textContent = `${stats.counts.queued} queued · ${stats.counts.running} running`;
    tick();
  }

  /** What changes with the clock alone: the oldest queued job's age, the rate limit's wait. */
  function tick() {
    if (!stats) return;
    const elapsed = (Date.now() - statsAt) / 1000;
    ui.oldestAge.textContent = stats.oldest_queued_age_s === null
      ? 'nothing queued'
      : duration(stats.oldest_queued_age_s + elapsed);
    const rate = stats.rate_limit;
    if (!rate) {
      ui.rateLimit.textContent = 'off';
      ui.rateNote.textContent = 'jobs start as soon as a worker is free';
    } else {
      ui.rateLimit.textContent = `${rate.jobs} per ${duration(rate.per_s)}`;
      if (rate.remaining === 0 && rate.next_start_in_s !== null) {
        const left = Math.max(0, Math.ceil(rate.next_start_in_s - elapsed));
        ui.rateNote.textContent = `rate limit ${rate.jobs}/${duration(rate.per_s)}: next start in ${duration(left)}`;
      } else {
        ui.rateNote.textContent = `${rate.remaining} of ${rate.jobs} starts left in this window`;
      }
    }
  }

  /** Re-says why each queued card waits (the rate limit's wait and backoffs tick). */
  function refreshReasons() {
    for (const card of byId.values()) {
      if (card.reason && card.job && card.job.status === 'queued') {
        const text = waitReason(card.job);
        if (card.reason.textContent !== text) card.reason.textContent = text;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The detail view of one job: #/jobs/{id}

  let detailId = null;
  let detailJob = null;
  let detailBusy = false;
  let listScroll = 0;

  function route() {
    const m = /^#\/jobs\/([^/?#]+)$/.exec(window.location.hash);
    if (m) {
      const id = decodeURIComponent(m[1]);
      if (detailId === null) listScroll = window.scrollY;
      openDetail(id);
    } else if (detailId !== null) {
      closeDetail();
    }
  }

  async function openDetail(id) {
    detailId = id;
    detailJob = null;
    ui.uploadSection.hidden = true;
    ui.jobs.hidden = true;
    ui.detail.hidden = false;
    ui.detailBody.replaceChildren(h('p', { class: 'card-note', text: 'Loading…' }));
    try {
      const resp = await request(`/api/jobs/${encodeURIComponent(id)}`);
      if (detailId !== id) return;
      if (resp.status === 404) {
        renderDetailGone('No job has this id (it may have been deleted).');
        return;
      }
      if (!resp.ok) throw new Error(await errorMessage(resp));
      detailJob = await resp.json();
      renderDetail();
    } catch (e) {
      if (detailId !== id) return;
      renderDetailGone(`The job could not be loaded: ${e.message}`);
    }
    const title = document.getElementById('detail-title');
    if (title) title.focus();
  }

  function closeDetail() {
    const id = detailId;
    detailId = null;
    detailJob = null;
    ui.detail.hidden = true;
    ui.detailBody.replaceChildren();
    ui.uploadSection.hidden = false;
    ui.jobs.hidden = false;
    window.scrollTo(0, listScroll);
    const card = id && byId.get(id);
    if (card && card.el.isConnected) card.nameLink.focus();
    else ui.jobsTitle.focus();
  }

  function renderDetailGone(text) {
    ui.detailBody.replaceChildren(
      h('h2', { id: 'detail-title', class: 'detail-title', tabIndex: -1, text: 'Job' }),
      h('p', { class: 'card-error', role: 'alert', text }),
    );
  }

  function detailAction(text, action, cls) {
    return h('button', {
      type: 'button',
      class: `button small ${cls || ''}`.trim(),
      text,
      disabled: detailBusy,
      onclick: () => detailAct(action),
    });
  }

  async function detailAct(action) {
    if (!detailJob || detailBusy) return;
    const spec = ACTIONS[action];
    const id = detailJob.id;
    detailBusy = true;
    renderDetail();
    let message = null;
    try {
      const resp = await request(spec.path(id), { method: spec.method });
      if (action === 'delete' && (resp.ok || resp.status === 404)) {
        announce(`${detailJob.file_name || 'The job'} deleted`);
        detailBusy = false;
        window.location.hash = '#/';
        return;
      }
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const job = await resp.json();
      if (detailId === id && isNewer(detailJob, job, false)) detailJob = job;
      showJob(job, false);
    } catch (e) {
      message = `${spec.verb} failed: ${e.message}`;
    } finally {
      detailBusy = false;
      if (detailId === id) renderDetail(message);
    }
  }

  function renderDetail(actionError) {
    const job = detailJob;
    if (!job) return;
    const openRaw = ui.detailBody.querySelector('details.raw[open]') !== null;
    const name = job.file_name || 'unnamed image';
    const links = job.links || {};
    const actions = [];
    if (links.retry) actions.push(detailAction('Retry', 'retry', 'primary'));
    if (links.cancel) actions.push(detailAction('Cancel', 'cancel'));
    if (job.status !== 'running') actions.push(detailAction('Delete', 'delete', 'quiet'));

    const item = (term, value) => (value === null || value === undefined || value === ''
      ? null
      : h('div', null, [h('dt', { text: term }), h('dd', { text: String(value) })]));
    const img = job.image || {};
    const result = job.result;
    const facts = h('dl', { class: 'facts' }, [
      item('Status', job.status),
      item('Created', dateTime(job.created_at)),
      job.status === 'queued' ? item('Runs at', dateTime(job.run_at)) : null,
      item('Started', job.started_at ? dateTime(job.started_at) : '—'),
      item('Finished', job.finished_at ? dateTime(job.finished_at) : '—'),
      item('Attempts', `${job.attempts} (at most ${job.max_attempts} per round)`),
      item('Priority', job.priority),
      item('Worker', result && result.worker),
      item('Image', [img.width && img.height ? `${img.width}×${img.height}` : '', shortType(img.content_type), bytes(img.size)].filter(Boolean).join(' · ')),
      item('SHA-256', img.sha256),
      item('Job id', job.id),
    ]);

    const sections = [];
    if (job.status === 'queued') sections.push(h('p', { class: 'card-note wait-reason', text: waitReason(job) }));
    if (job.status === 'running') sections.push(progress('Classifying…'));
    if (job.status === 'canceled') {
      sections.push(h('p', { class: 'card-note', text: job.started_at ? 'Canceled while it ran; its result was dropped.' : 'Canceled before it ran.' }));
    }
    if (job.error && job.status === 'failed') {
      sections.push(h('p', { class: 'card-error' }, [
        job.error.message,
        h('span', { class: 'error-code', text: ` (${job.error.code})` }),
      ]));
    }
    if (result) {
      sections.push(h('h3', { text: 'Labels' }), chart(result), resultDetails(result, job.cached));
    }
    const errors = job.attempt_errors || [];
    sections.push(h('h3', { text: 'Attempts' }));
    if (errors.length) sections.push(attemptList(job));
    else sections.push(h('p', { class: 'card-note', text: job.attempts ? 'No attempt failed.' : 'Not run yet.' }));
    const raw = h('pre', { class: 'raw-json', tabIndex: 0, 'aria-label': 'The job as JSON', text: JSON.stringify(job, null, 2) });
    const rawDetails = h('details', { class: 'raw' }, [h('summary', { text: 'Raw JSON' }), raw]);
    rawDetails.open = openRaw;
    sections.push(rawDetails);

    const image = h('img', {
      class: 'detail-image',
      src: withToken(links.image || `/api/jobs/${encodeURIComponent(job.id)}/image`),
      alt: `The uploaded image ${name}`,
    });
    ui.detail.dataset.jobId = job.id;
    ui.detail.dataset.status = job.status;
    ui.detailBody.replaceChildren(...[
      h('div', { class: 'detail-head' }, [
        h('h2', { id: 'detail-title', class: 'detail-title', tabIndex: -1, text: name }),
        h('span', { class: 'status-badge', text: STATUS_TEXT[job.status] || job.status, 'data-status': job.status }),
      ]),
      h('div', { class: 'detail-actions card-actions' }, actions),
      actionError ? h('p', { class: 'card-error action-error', role: 'alert', text: actionError }) : null,
      h('div', { class: 'detail-grid' }, [
        h('figure', { class: 'detail-figure' }, [image]),
        h('div', { class: 'detail-info' }, [facts, ...sections]),
      ]),
    ].filter(Boolean));
    const badge = ui.detailBody.querySelector('.status-badge');
    if (badge) badge.dataset.status = job.status;
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
    refreshStats();
    if (data.kind === 'deleted' || !data.job) {
      heldJobs.delete(data.job_id);
      const item = batchByJob.get(data.job_id);
      if (item) {
        item.status = 'deleted';
        scheduleBatch();
      }
      const card = byId.get(data.job_id);
      if (card) {
        removeCard(card);
        if (matchTotal !== null) matchTotal = Math.max(0, matchTotal - 1);
        refreshToolbar();
      }
      if (detailId === data.job_id && !detailBusy) renderDetailGone('This job was deleted.');
      return;
    }
    if (detailId === data.job.id && isNewer(detailJob, data.job, true)) {
      detailJob = data.job;
      if (!detailBusy) renderDetail();
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
      refreshStats();
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

  let lastMinuteShown = -1;

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

    for (const tab of ui.tabs.querySelectorAll('.tab')) {
      tab.addEventListener('click', () => setStatus(tab.dataset.status));
    }
    ui.search.addEventListener('submit', (e) => {
      e.preventDefault();
      applySearch();
    });
    ui.searchReset.addEventListener('click', () => {
      ui.search.reset();
      applySearch();
    });
    ui.loadMore.addEventListener('click', () => loadPage({ reset: false }));
    ui.retryAll.addEventListener('click', retryAllFailed);
    ui.cancelAll.addEventListener('click', cancelAllQueued);
    ui.deleteFinished.addEventListener('click', deleteFinished);
    ui.batchClear.addEventListener('click', clearBatch);
    window.addEventListener('hashchange', route);

    // The clock: ages and waits tick; when a minute has passed, the per-minute figures move on.
    setInterval(() => {
      tick();
      refreshReasons();
      const minute = Math.floor(Date.now() / 60000);
      if (stats && minute !== lastMinuteShown) {
        lastMinuteShown = minute;
        const recent = stats.finished_last_minute > 0
          || (stats.finished_per_minute || []).some((m) => m.succeeded + m.failed + m.canceled > 0);
        if (recent) refreshStats();
      }
    }, 1000);
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
    stats = null;
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
    refreshStats();
    fetchModels();
    // Nodes come and go: the list of who serves what is read again now and then.
    setInterval(fetchModels, 30000);
    route();
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
  loadErrorCodes();
  probe();
})();
