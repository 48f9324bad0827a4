// labmq-web: the page. It speaks to labmq-web over one WebSocket (README.md
// describes the messages): JSON text for the model (daemon, devices,
// descriptions, values, events, stats, replies) and binary messages for
// stream blocks. Panels are generated from each device's `describe` and kept
// live by change events; streams are drawn once per animation frame, never
// per message, so a fast stream cannot freeze the tab.
'use strict';

const MAX_EVENTS = 100;
const TRACE_MIN = 2000, TRACE_MAX = 50000;

// What the page knows, also read by the tests and the benchmark (window.labmq).
const lab = {
  connected: false, connects: 0, daemon: null, daemonRestarts: 0,
  devices: [], describe: {}, values: {}, streams: {}, replies: 0,
};
window.labmq = lab;

let ws = null, nextId = 1, retryMs = 500;
const pending = new Map(); // request id -> callback(reply)
const subscribed = new Set(); // topics asked on this connection

const $ = (sel, root) => (root || document).querySelector(sel);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

// ---- the connection ----

function connect() {
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  ws = new WebSocket(url, 'labmq');
  ws.binaryType = 'arraybuffer';
  setConn('connecting', false);
  ws.onopen = () => {
    lab.connected = true; lab.connects++; retryMs = 500;
    subscribed.clear();
    setConn('connected', true);
  };
  ws.onclose = (ev) => {
    lab.connected = false;
    for (const [, cb] of pending) cb({ok: false, error: {code: 'CLOSED', message: 'labmq-web went away before it answered'}});
    pending.clear();
    setConn('labmq-web unreachable' + (ev.reason ? ': ' + ev.reason : '') + '; retrying', false);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 5000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === 'string') onText(JSON.parse(ev.data));
    else onBlock(ev.data);
  };
}

function setConn(text, good) {
  const c = $('#conn');
  c.textContent = text;
  c.className = 'badge ' + (good ? 'good' : 'bad');
  c.dataset.state = good ? 'connected' : 'disconnected';
}

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(msg));
  return true;
}

function request(msg, cb) {
  msg.id = nextId++;
  if (!send(msg)) { cb({ok: false, error: {code: 'CLOSED', message: 'not connected to labmq-web'}}); return; }
  pending.set(msg.id, cb);
}

function subscribe(topic) {
  if (subscribed.has(topic)) return;
  if (send({op: 'sub', topic})) subscribed.add(topic);
}

// ---- text messages ----

function onText(m) {
  switch (m.t) {
  case 'hello': lab.maxRate = m.max_rate; break;
  case 'daemon': onDaemon(m); break;
  case 'list': lab.devices = m.devices; renderDevices(); break;
  case 'describe': lab.describe[m.device] = m.d; renderPanel(m.device); break;
  case 'describe_failed': notice(`describe ${m.device}: ${m.error.code}: ${m.error.message}`); break;
  case 'values':
    lab.values[m.device] = Object.assign(lab.values[m.device] || {}, m.values);
    for (const [k, v] of Object.entries(m.values)) showValue(m.device, k, v);
    break;
  case 'event': onEvent(m); break;
  case 'stats': renderStats(m.s); break;
  case 'reply': {
    lab.replies++;
    const cb = pending.get(m.id);
    pending.delete(m.id);
    if (cb) cb(m);
    break;
  }
  case 'error':
    if (m.id != null && pending.has(m.id)) {
      const cb = pending.get(m.id);
      pending.delete(m.id);
      cb({ok: false, error: {code: 'WEB', message: m.message}});
    } else notice('labmq-web: ' + m.message);
    break;
  }
}

function notice(text) {
  $('#notice').textContent = text;
}

function onDaemon(m) {
  const d = $('#daemon');
  if (lab.daemon && m.restarts > lab.daemonRestarts)
    notice(`daemon restarted at ${new Date(m.started_s * 1000).toLocaleTimeString()}: new epoch, stream counters start again`);
  lab.daemon = m;
  lab.daemonRestarts = m.restarts;
  d.dataset.up = String(m.up);
  d.dataset.restarts = String(m.restarts);
  d.className = 'badge ' + (m.up ? 'good' : 'bad');
  d.textContent = m.up
    ? `daemon ${m.ping.version} at ${m.control}, up since ${new Date(m.started_s * 1000).toLocaleTimeString()}` +
      (m.restarts ? `, ${m.restarts} restart${m.restarts > 1 ? 's' : ''} seen` : '')
    : `daemon unreachable at ${m.control}: ${m.error}`;
}

function onEvent(m) {
  const when = new Date(m.t_ns / 1e6).toLocaleTimeString();
  let text;
  if (m.kind === 'property') {
    lab.values[m.device] = lab.values[m.device] || {};
    lab.values[m.device][m.name] = m.value;
    showValue(m.device, m.name, m.value);
    text = `${m.device}.${m.name} = ${fmt(m.value)} (${m.cause})`;
  } else {
    const d = lab.devices.find((x) => x.name === m.device);
    if (d) { d.state = m.state; d.error = m.error || null; }
    renderDevices();
    const badge = $(`[data-panel-state="${CSS.escape(m.device)}"]`);
    if (badge) setState(badge, m.state);
    text = `${m.device}: ${m.state} (${m.cause}${m.error ? ': ' + m.error : ''})`;
  }
  if (m.lost_before) text += ` [${m.lost_before} event${m.lost_before > 1 ? 's' : ''} lost before]`;
  const log = $('#events');
  log.prepend(el('li', {text: `${when} ${text}`}));
  while (log.children.length > MAX_EVENTS) log.lastChild.remove();
}

function fmt(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'object' && v.$array) {
    const head = v.head.map((x) => (typeof x === 'number' ? +x.toPrecision(6) : x)).join(', ');
    return `${v.$array}[${v.shape.join('×')}]: ${head}${v.size > v.head.length ? ', …' : ''}`;
  }
  if (typeof v === 'number') return String(+v.toPrecision(8));
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function setState(node, state) {
  node.textContent = state;
  node.className = 'badge state-' + state;
  node.dataset.state = state;
}

// ---- the device list ----

function renderDevices() {
  const body = $('#devices tbody');
  body.replaceChildren();
  for (const d of lab.devices) {
    const st = el('span', {class: 'state'});
    setState(st, d.state);
    body.append(el('tr', {'data-device': d.name},
      el('td', {text: d.name}), el('td', {}, st), el('td', {text: d.driver}),
      el('td', {text: d.description}), el('td', {class: 'err', text: d.error || ''})));
  }
  // Panels of devices a new daemon no longer has go.
  for (const p of document.querySelectorAll('.panel')) {
    if (!lab.devices.some((d) => d.name === p.dataset.panel)) {
      delete lab.describe[p.dataset.panel];
      p.remove();
    }
  }
  for (const d of lab.devices) {
    const badge = $(`[data-panel-state="${CSS.escape(d.name)}"]`);
    if (badge) setState(badge, d.state);
  }
}

// ---- a device's panel, from its description ----

// Checks a value typed into the page against the description before it is
// sent: type and limits (protocol 2.2). Returns [value] or [undefined, why].
function parseInput(spec, input) {
  const unit = spec.unit ? ' ' + spec.unit : '';
  if (spec.type === 'bool') return [input.value === 'true'];
  if (spec.type === 'string') return [input.value];
  if (spec.type !== 'int' && spec.type !== 'float') return [undefined, `${spec.type} values cannot be entered here`];
  const text = input.value.trim();
  if (text === '' || !isFinite(Number(text))) return [undefined, `'${text}' is not a number`];
  const v = Number(text);
  if (spec.type === 'int' && !Number.isInteger(v)) return [undefined, `must be an integer, got ${text}`];
  if (spec.min !== undefined && v < spec.min) return [undefined, `${v}${unit} is below the minimum ${spec.min}${unit}`];
  if (spec.max !== undefined && v > spec.max) return [undefined, `${v}${unit} is above the maximum ${spec.max}${unit}`];
  return [v];
}

function inputFor(spec, key) {
  let i;
  if (spec.type === 'bool') {
    i = el('select', {}, el('option', {value: 'true', text: 'true'}), el('option', {value: 'false', text: 'false'}));
  } else if (spec.type === 'int' || spec.type === 'float') {
    // type=text, not number: the page itself says why a value is refused.
    i = el('input', {type: 'text', inputmode: 'decimal'});
    const lim = [spec.min !== undefined ? `≥ ${spec.min}` : '', spec.max !== undefined ? `≤ ${spec.max}` : ''].filter(Boolean);
    i.placeholder = lim.join(', ') || spec.type;
  } else if (spec.type === 'string') {
    i = el('input', {type: 'text', placeholder: 'string'});
  } else { // arrays (and none) cannot be typed in: say so instead of offering a field
    i = el('input', {type: 'text', placeholder: `${spec.type}: not from the page`, disabled: ''});
  }
  i.dataset.input = key;
  return i;
}

function limits(spec) {
  if (spec.min === undefined && spec.max === undefined) return '';
  return `${spec.min !== undefined ? spec.min : '−∞'} … ${spec.max !== undefined ? spec.max : '∞'}`;
}

function showResult(node, reply) {
  if (reply.ok) {
    node.className = 'ok';
    node.textContent = reply.result === null ? 'done' : fmt(reply.result);
  } else {
    node.className = 'err';
    node.textContent = `${reply.error.code}: ${reply.error.message}`;
  }
}

function renderPanel(dev) {
  const d = lab.describe[dev];
  const key = (n) => `${dev}.${n}`;
  const old = $(`[data-panel="${CSS.escape(dev)}"]`);
  const badge = el('span', {'data-panel-state': dev});
  setState(badge, d.state);
  const panel = el('section', {class: 'panel', 'data-panel': dev},
    el('h2', {}, `${dev} `, badge, el('span', {class: 'doc', text: ` ${d.driver}: ${d.description}`})));

  if (d.properties.length) {
    const rows = d.properties.map((p) => {
      const value = el('span', {'data-value': key(p.name)});
      const msg = el('span', {'data-error': key(p.name)});
      let edit = el('span', {class: 'doc', text: 'read-only'});
      if (p.access === 'rw') {
        const input = inputFor(p, key(p.name));
        const apply = () => {
          const [v, why] = parseInput(p, input);
          if (why !== undefined) { msg.className = 'err'; msg.textContent = 'not sent: ' + why; return; }
          msg.className = ''; msg.textContent = '…';
          request({op: 'set', device: dev, name: p.name, value: v}, (r) => showResult(msg, r));
        };
        input.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply(); });
        edit = el('span', {}, input, el('button', {type: 'button', 'data-set': key(p.name), onclick: apply, text: 'set'}));
      }
      return el('tr', {'data-prop': key(p.name), title: p.doc || ''},
        el('td', {text: p.name}), el('td', {}, value), el('td', {text: p.unit || ''}),
        el('td', {text: limits(p)}), el('td', {text: p.access}), el('td', {}, edit, ' ', msg));
    });
    panel.append(el('h3', {text: 'Properties'}),
      el('table', {}, el('thead', {}, el('tr', {}, ...['name', 'value', 'unit', 'limits', 'access', 'set']
        .map((h) => el('th', {text: h})))), el('tbody', {}, ...rows)));
  }

  if (d.methods.length) {
    panel.append(el('h3', {text: 'Methods'}));
    for (const m of d.methods) {
      const out = el('span', {'data-result': key(m.name)});
      const inputs = m.args.map((a) => inputFor(a, `${key(m.name)}.${a.name}`));
      const form = el('form', {class: 'method', 'data-method': key(m.name)},
        el('button', {type: 'submit', text: m.name}), ' ');
      m.args.forEach((a, i) => form.append(el('label', {title: a.doc || ''},
        `${a.name}${a.unit ? ' (' + a.unit + ')' : ''} `, inputs[i]), ' '));
      form.append(el('span', {class: 'doc', text: m.doc ? ' ' + m.doc + ' ' : ' '}), out);
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        const args = [];
        for (let i = 0; i < m.args.length; i++) {
          const [v, why] = parseInput(m.args[i], inputs[i]);
          if (why !== undefined) { out.className = 'err'; out.textContent = `not sent: ${m.args[i].name}: ${why}`; return; }
          args.push(v);
        }
        out.className = ''; out.textContent = '…';
        request({op: 'call', device: dev, name: m.name, args}, (r) => showResult(out, r));
      });
      panel.append(form);
    }
  }

  if (d.streams.length) {
    const box = el('div', {class: 'streams'});
    for (const s of d.streams) box.append(streamView(s));
    panel.append(el('h3', {text: 'Streams'}), box);
  }

  if (old) old.replaceWith(panel); else $('#panels').append(panel);
  for (const [k, v] of Object.entries(lab.values[dev] || {})) showValue(dev, k, v);
  for (const s of d.streams) subscribe(s.topic);
}

function showValue(dev, name, v) {
  const n = $(`[data-value="${CSS.escape(dev + '.' + name)}"]`);
  if (n) { n.textContent = fmt(v); n.dataset.raw = JSON.stringify(v); }
}

// ---- streams ----

function streamState(topic) {
  let s = lab.streams[topic];
  if (!s) {
    s = lab.streams[topic] = {topic, blocks: 0, drawn: 0, bytes: 0, lost: 0, skipped: 0, restarts: 0, epoch: null,
      seq: null, rate: 0, rateCount: 0, rateT0: performance.now(), latest: null, dirty: false, traces: null};
  }
  return s;
}

function streamView(spec) {
  const s = streamState(spec.topic);
  const canvas = el('canvas', {width: 480, height: 200});
  const counters = el('div', {class: 'counters'});
  s.view = {canvas, counters, spec};
  s.traces = null; // the shape decides the view at the first block
  return el('div', {class: 'stream', 'data-stream': spec.topic},
    el('div', {}, el('b', {text: spec.topic}), el('span', {class: 'doc',
      text: ` ${spec.dtype} [${(spec.shape || []).join('×')}] ${spec.rate_hz ? spec.rate_hz + ' Hz' : ''} ${spec.units || ''}`})),
    canvas, counters);
}

const DTYPES = {'|u1': Uint8Array, '|i1': Int8Array, '<u2': Uint16Array, '<i2': Int16Array, '<u4': Uint32Array,
  '<i4': Int32Array, '<u8': BigUint64Array, '<i8': BigInt64Array, '<f4': Float32Array, '<f8': Float64Array};

function onBlock(buf) {
  const hlen = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, hlen)));
  const T = DTYPES[h.dtype];
  if (!T) return;
  const n = h.shape.reduce((a, b) => a * b, 1);
  let data = new T(buf, 4 + hlen, n);
  if (T === BigUint64Array || T === BigInt64Array) data = Float64Array.from(data, Number);
  const s = streamState(h.topic);
  if (s.epoch !== null && h.epoch !== s.epoch) s.traces = null; // a restart: the plot starts again
  s.blocks++;
  s.bytes += buf.byteLength;
  s.rateCount++;
  s.lost = h.lost; s.skipped = h.skipped; s.restarts = h.restarts; s.offered = h.offered;
  s.epoch = h.epoch; s.seq = h.seq; s.units = h.units;
  s.latest = {h, data};
  ingest(s, h, data);
  s.dirty = true;
}

// How a block is shown: 1-D a trace (or one sample per channel when the units
// name the channels, like "V,A"), [N, C<=8] C traces, else an image.
function layout(h) {
  const units = (h.units || '').split(',');
  if (h.shape.length === 1 && units.length > 1 && h.shape[0] === units.length)
    return {kind: 'trace', channels: units.length, per: 1, names: units};
  if (h.shape.length === 1) return {kind: 'trace', channels: 1, per: h.shape[0], names: [h.units || '']};
  if (h.shape.length === 2 && h.shape[1] <= 8)
    return {kind: 'trace', channels: h.shape[1], per: h.shape[0], names: units};
  return {kind: 'image', height: h.shape[0], width: h.shape.slice(1).reduce((a, b) => a * b, 1)};
}

function ingest(s, h, data) {
  const L = layout(h);
  if (L.kind !== 'trace') return;
  if (!s.traces || s.traces.channels !== L.channels) {
    const cap = Math.min(TRACE_MAX, Math.max(TRACE_MIN, L.per * 5));
    s.traces = {channels: L.channels, names: L.names, cap, len: 0, head: 0,
      buf: Array.from({length: L.channels}, () => new Float64Array(cap))};
  }
  const t = s.traces;
  // A block that does not follow the last one drawn (skipped, lost, a new
  // epoch) starts after a gap: one NaN sample, drawn as a break in the line.
  if (s.lastSeq !== undefined && (h.seq !== s.lastSeq + 1 || h.epoch !== s.lastEpoch)) push(t, L.channels, null);
  s.lastSeq = h.seq; s.lastEpoch = h.epoch;
  for (let i = 0; i < L.per; i++) push(t, L.channels, data, i);
}

function push(t, channels, data, i) {
  for (let c = 0; c < channels; c++) t.buf[c][t.head] = data ? data[i * channels + c] : NaN;
  t.head = (t.head + 1) % t.cap;
  if (t.len < t.cap) t.len++;
}

const COLOURS = ['#4fc3f7', '#ffb74d', '#aed581', '#f06292', '#ba68c8', '#fff176', '#4db6ac', '#e57373'];

function drawTrace(s) {
  const {canvas} = s.view, t = s.traces, g = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  g.fillStyle = '#111'; g.fillRect(0, 0, W, H);
  if (!t || !t.len) return;
  let lo = Infinity, hi = -Infinity;
  for (let c = 0; c < t.channels; c++) for (let i = 0; i < t.len; i++) {
    const v = t.buf[c][i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!isFinite(lo) || !isFinite(hi)) return;
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const y = (v) => H - 1 - ((v - lo) / (hi - lo)) * (H - 1);
  const start = (t.head - t.len + t.cap) % t.cap;
  const gaps = [];
  for (let c = 0; c < t.channels; c++) {
    const b = t.buf[c];
    g.strokeStyle = COLOURS[c % COLOURS.length];
    g.beginPath();
    // min/max per pixel column: every sample counts, the cost is per pixel.
    let pen = false;
    for (let x = 0; x < W; x++) {
      const i0 = Math.floor((x * t.len) / W), i1 = Math.max(i0 + 1, Math.floor(((x + 1) * t.len) / W));
      let mn = Infinity, mx = -Infinity, gap = false;
      for (let i = i0; i < i1 && i < t.len; i++) {
        const v = b[(start + i) % t.cap];
        if (v !== v) gap = true;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      if (gap && c === 0) gaps.push(x);
      if (mn === Infinity) { pen = false; continue; }
      if (!pen || gap) g.moveTo(x, y(mn)); else g.lineTo(x, y(mn));
      if (mx !== mn) g.lineTo(x, y(mx));
      pen = true;
    }
    g.stroke();
  }
  g.fillStyle = 'rgba(255, 255, 255, 0.25)'; // where blocks are missing (skipped or lost)
  for (const x of gaps) g.fillRect(x, 0, 1, H);
  g.fillStyle = '#ccc'; g.font = '11px monospace';
  g.fillText(`${+hi.toPrecision(4)}`, 3, 11);
  g.fillText(`${+lo.toPrecision(4)}`, 3, H - 3);
  g.fillText(t.names.map((n, c) => `${n || 'ch' + c}`).join('  '), W - 80, 11);
}

// 256-entry colour map (viridis-like, from five stops).
const LUT = (() => {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const lut = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const f = (i / 255) * (stops.length - 1), k = Math.min(Math.floor(f), stops.length - 2), r = f - k;
    const c = stops[k].map((v, j) => Math.round(v + (stops[k + 1][j] - v) * r));
    lut[i] = (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0]; // RGBA in little-endian memory
  }
  return lut;
})();

function drawImage(s) {
  const {h, data} = s.latest, L = layout(h), canvas = s.view.canvas;
  if (canvas.width !== L.width || canvas.height !== L.height) {
    canvas.width = L.width; canvas.height = L.height; canvas.className = 'image';
  }
  const g = canvas.getContext('2d');
  if (!s.img || s.img.width !== L.width || s.img.height !== L.height) s.img = g.createImageData(L.width, L.height);
  let lo = Infinity, hi = -Infinity;
  const n = L.width * L.height;
  for (let i = 0; i < n; i++) { const v = data[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
  const scale = hi > lo ? 255 / (hi - lo) : 0; // auto-contrast: the frame's own range
  const px = new Uint32Array(s.img.data.buffer);
  for (let i = 0; i < n; i++) px[i] = LUT[((data[i] - lo) * scale) | 0];
  g.putImageData(s.img, 0, 0);
  s.contrast = [lo, hi];
}

function drawCounters(s) {
  const c = s.view.counters;
  const cls = (k, v) => `<span class="${k}${v ? ' nonzero' : ''}">${v}</span>`;
  c.innerHTML = `blocks <span class="blocks">${s.blocks}</span> · rate <span class="rate">${s.rate.toFixed(1)}</span>/s` +
    ` · lost ${cls('lost', s.lost)} · skipped ${cls('skipped', s.skipped)} · restarts <span class="restarts">${s.restarts}</span>` +
    `<br>epoch <span class="epoch">${s.epoch}</span> · seq <span class="seq">${s.seq}</span>` +
    (s.contrast ? ` · range ${s.contrast[0]}…${s.contrast[1]}` : '');
}

function frame(now) {
  for (const s of Object.values(lab.streams)) {
    if (now - s.rateT0 >= 1000) {
      s.rate = (s.rateCount * 1000) / (now - s.rateT0);
      s.rateCount = 0; s.rateT0 = now;
      if (s.view) drawCounters(s);
    }
    if (!s.dirty || !s.view || !s.latest) continue;
    s.dirty = false;
    if (layout(s.latest.h).kind === 'image') drawImage(s); else drawTrace(s);
    s.drawn++;
    drawCounters(s);
  }
  requestAnimationFrame(frame);
}

// ---- stats ----

function renderStats(st) {
  $('#stats-summary').textContent =
    `daemon up ${st.uptime_s.toFixed(0)} s · requests ${st.requests} · errors ${st.errors}` +
    ` · replies waiting ${st.replies_waiting} · dropped ${st.replies_dropped}`;
  const body = $('#stats tbody');
  body.replaceChildren();
  for (const d of st.devices) {
    const l = d.latency_us || {};
    const f = (x) => (x === undefined ? '—' : Math.round(x));
    body.append(el('tr', {'data-stats': d.name}, el('td', {text: d.name}), el('td', {text: d.state}),
      el('td', {class: 'calls', text: d.calls}), el('td', {class: 'errors', text: d.errors}), el('td', {text: d.in_flight}),
      el('td', {text: `${f(l.mean)} / ${f(l.p50)} / ${f(l.p99)} / ${f(l.max)}`}),
      el('td', {text: d.disconnects}), el('td', {text: d.reopens}),
      el('td', {text: (d.streams || []).map((s) => `${s.name}: ${s.published} / ${s.dropped} / ${s.skipped} / ${s.errors}`).join('; ')})));
  }
}

connect();
requestAnimationFrame(frame);
