// Portcullis dashboard: reads the admin API (GET only) and redraws every second.
// Everything is built with DOM calls and textContent: no HTML is ever parsed from data.
'use strict';
(() => {
  const TOKEN_KEY = 'portcullis-admin-token';
  const POLL_MS = 1000;
  const SVG = 'http://www.w3.org/2000/svg';
  const MAX_SAMPLES = 900;
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let running = false;
  let routesVersion = null;
  let series = { times: [], routes: {} };
  const $ = (id) => document.getElementById(id);

  class NeedToken extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    const r = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    if (r.status === 401) throw new NeedToken('admin token required');
    if (!r.ok) throw new Error(path + ' answered HTTP ' + r.status);
    return r.json();
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function setStatus(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('error', !!isError);
  }

  // ---- token prompt -------------------------------------------------------------------
  function showLogin(message) {
    running = false;
    $('panels').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setStatus('Waiting for the admin token.');
    $('token').focus();
  }

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    $('token').value = '';
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });

  // ---- config -------------------------------------------------------------------------
  function renderConfig(c) {
    const dl = $('config');
    dl.replaceChildren();
    const row = (k, v, id, cls) => {
      dl.append(el('dt', k));
      const dd = el('dd', v, cls);
      if (id) dd.id = id;
      dl.append(dd);
    };
    row('Version', c.config_version, 'config-version');
    row('Checksum', c.checksum, 'config-checksum');
    row('Loaded at', c.loaded_at);
    row('Source', c.source === 'store' ? 'store, version ' + (c.store_version ?? 'none yet') : 'file');
    if (c.source === 'store') {
      row('Last-known-good file', c.last_known_good ? 'yes: running from it' : 'no');
      row('Store', c.store_reachable ? 'reachable' : '⚠ unreachable', null,
        c.store_reachable ? 'state-ok' : 'state-bad');
      if (c.failed_store_version) {
        row('Refused store version', c.failed_store_version.version, null, 'state-bad');
      }
    }
    const r = c.last_reload;
    row('Last reload', r ? r.result + ' at ' + r.at + ' (version ' + r.config_version + ')' : 'none since start',
      'last-reload', r && r.result === 'failed' ? 'state-bad' : null);
    const box = $('reload-errors');
    box.replaceChildren();
    const errors = (r && r.errors) || [];
    if (errors.length) {
      box.append(el('p', 'The last reload was refused; the running config keeps serving:', 'errors'));
      const ul = el('ul', null, 'errors');
      for (const e of errors) ul.append(el('li', e));
      box.append(ul);
    }
  }

  // ---- upstreams ----------------------------------------------------------------------
  function renderUpstreams(doc) {
    const tbody = $('upstreams').tBodies[0];
    tbody.replaceChildren();
    if (!doc.upstreams.length) {
      const td = el('td', 'No upstreams in this config.', 'muted');
      td.colSpan = 7;
      const tr = el('tr');
      tr.append(td);
      tbody.append(tr);
    }
    for (const u of doc.upstreams) {
      for (const t of u.targets) {
        const tr = el('tr');
        tr.dataset.upstream = u.name;
        tr.dataset.target = t.address;
        const breaker = t.breaker ? t.breaker.state : 'none';
        const bad = !t.healthy || breaker === 'open';
        tr.classList.toggle('bad', bad);
        tr.append(el('th', u.name));
        tr.firstChild.scope = 'row';
        tr.append(el('td', t.address));
        tr.append(el('td', t.healthy ? 'healthy' : '⚠ UNHEALTHY', 'health ' + (t.healthy ? 'state-ok' : 'state-bad')));
        const label = { closed: 'closed', open: '⚠ OPEN', half_open: '◐ half-open', none: '—' }[breaker] || breaker;
        const cls = breaker === 'open' ? 'state-bad' : breaker === 'half_open' ? 'state-warn' : '';
        const td = el('td', label, 'breaker ' + cls);
        if (t.breaker && t.breaker.changed_at) td.title = 'since ' + t.breaker.changed_at;
        if (t.breaker && t.breaker.changed_at && breaker !== 'closed') {
          td.append(el('span', ' since ' + t.breaker.changed_at.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), 'muted'));
        }
        tr.append(td);
        tr.append(el('td', t.in_flight, 'num'));
        tr.append(el('td', (100 * t.error_rate).toFixed(1) + ' %', 'num'));
        tr.append(el('td', t.idle_connections, 'num'));
        tbody.append(tr);
      }
    }
  }

  // ---- routes -------------------------------------------------------------------------
  const some = (a) => Array.isArray(a) && a.length > 0;

  function describeMatch(m) {
    if (!m) return 'everything';
    const parts = [];
    if (some(m.hosts)) parts.push('hosts ' + m.hosts.join(', '));
    if (m.path) {
      const kind = ['exact', 'prefix', 'regex'].find((k) => m.path[k] !== null && m.path[k] !== undefined);
      if (kind) parts.push(kind + ' ' + m.path[kind]);
    }
    if (some(m.methods)) parts.push(m.methods.join(' '));
    if (some(m.headers)) {
      parts.push('headers ' + m.headers.map((h) => h.name + (h.value != null ? '=' + h.value
        : h.regex != null ? '~' + h.regex : ' present')).join(', '));
    }
    return parts.join('; ') || 'everything';
  }

  function describe(v) {
    if (v === undefined || v === null) return '—';
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  function describeUpstream(r) {
    if (r.split) return r.split.map((s) => s.upstream + ' ' + (s.weight / 100).toFixed(2) + ' %').join(', ');
    if (r.upstream) return r.upstream;
    if (r.direct_response) return 'answered by the gateway (' + r.direct_response.status + ')';
    return '—';
  }

  function renderRoutes(doc) {
    const tbody = $('routes').tBodies[0];
    tbody.replaceChildren();
    for (const r of doc.routes) {
      const tr = el('tr');
      tr.dataset.route = r.name;
      const name = el('th', r.name);
      name.scope = 'row';
      tr.append(name);
      tr.append(el('td', describeMatch(r.match), 'match'));
      tr.append(el('td', describe(r.auth), 'auth'));
      tr.append(el('td', some(r.rate_limits) ? r.rate_limits.join(', ') : '—', 'limits'));
      tr.append(el('td', describeUpstream(r), 'upstream'));
      for (const k of ['rps', 'e4xx', 'e5xx', 'latency', 'limited', 'authfail']) {
        tr.append(el('td', '…', 'num ' + k));
      }
      tbody.append(tr);
    }
    renderTraffic();
  }

  function mergeSeries(doc) {
    const n = doc.times.length;
    if (!n) return;
    const before = series.times.length;
    series.times.push(...doc.times);
    const next = {};
    for (const [name, cols] of Object.entries(doc.routes)) {
      const old = series.routes[name] || {};
      next[name] = {};
      for (const [k, values] of Object.entries(cols)) {
        const prev = old[k] || new Array(before).fill(null);
        next[name][k] = prev.concat(values);
      }
    }
    series.routes = next;
    const extra = series.times.length - MAX_SAMPLES;
    if (extra > 0) {
      series.times.splice(0, extra);
      for (const cols of Object.values(series.routes)) {
        for (const k of Object.keys(cols)) cols[k].splice(0, extra);
      }
    }
  }

  function recentMean(values, n) {
    const tail = values.slice(-n).filter((v) => v !== null);
    if (!tail.length) return null;
    return tail.reduce((a, b) => a + b, 0) / tail.length;
  }

  function fmt(v, digits) {
    return v === null || v === undefined ? '—' : v.toFixed(digits);
  }

  function sparkline(values, label) {
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 120 24');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
    const max = Math.max(1e-9, ...values.filter((v) => v !== null));
    const step = values.length > 1 ? 120 / (values.length - 1) : 0;
    const pts = [];
    values.forEach((v, i) => {
      if (v !== null) pts.push((i * step).toFixed(1) + ',' + (23 - (v / max) * 22).toFixed(1));
    });
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.append(line);
    return svg;
  }

  function renderTraffic() {
    const windowS = Number($('window').value);
    for (const tr of $('routes').tBodies[0].rows) {
      const cols = series.routes[tr.dataset.route];
      if (!cols) continue;
      const w = (k) => cols[k].slice(-windowS);
      const cell = (cls, value, values, label) => {
        const td = tr.querySelector('td.' + cls);
        td.replaceChildren(el('span', value, 'value'));
        if (values) td.append(sparkline(values, label));
      };
      const rps = recentMean(cols.requests_per_s, 5);
      cell('rps', fmt(rps, 1), w('requests_per_s'), 'requests per second, ' + windowS + ' s');
      cell('e4xx', fmt(recentMean(cols.errors_4xx_per_s, 5), 1), w('errors_4xx_per_s'), '4xx per second');
      cell('e5xx', fmt(recentMean(cols.errors_5xx_per_s, 5), 1), w('errors_5xx_per_s'), '5xx per second');
      const p50 = recentMean(cols.p50_ms, 5);
      const p99 = recentMean(cols.p99_ms, 5);
      cell('latency', fmt(p50, 1) + ' / ' + fmt(p99, 1), w('p99_ms'), 'p99 latency in milliseconds');
      cell('limited', fmt(recentMean(cols.rate_limited_per_s, 5), 1));
      cell('authfail', fmt(recentMean(cols.auth_failures_per_s, 5), 1));
      tr.dataset.rps = rps === null ? '' : String(rps);
    }
  }

  $('window').addEventListener('change', renderTraffic);

  // ---- the loop -----------------------------------------------------------------------
  async function tick() {
    const since = series.times.length ? series.times[series.times.length - 1] : 0;
    const [config, upstreams, fresh] = await Promise.all([
      api('/admin/config-version'),
      api('/admin/upstreams'),
      api('/admin/series?since=' + since),
    ]);
    renderConfig(config);
    renderUpstreams(upstreams);
    if (routesVersion !== config.config_version) {
      renderRoutes(await api('/admin/routes'));
      routesVersion = config.config_version;
    }
    mergeSeries(fresh);
    renderTraffic();
    $('instance').textContent = 'Numbers are this instance\'s: ' + fresh.instance.hostname + ', pid ' + fresh.instance.pid + '.';
    setStatus('Updated ' + new Date().toLocaleTimeString() + '.');
  }

  async function loop() {
    while (running) {
      try {
        await tick();
      } catch (e) {
        if (e instanceof NeedToken) {
          showLogin(token ? 'That token was refused.' : '');
          return;
        }
        setStatus('Cannot read the admin API (' + e.message + '); showing the last data.', true);
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async function start() {
    try {
      // Nothing is shown before the admin API has accepted the token (or needs none).
      await api('/admin/config-version');
    } catch (e) {
      if (e instanceof NeedToken) {
        showLogin(token ? 'That token was refused.' : '');
      } else {
        setStatus('Cannot read the admin API (' + e.message + ').', true);
        setTimeout(start, POLL_MS);
      }
      return;
    }
    $('login').hidden = true;
    $('panels').hidden = false;
    running = true;
    loop();
  }

  start();
})();
