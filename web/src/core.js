// core.js: the Unigate protocol client shared by the widget and the console.
// The Go handler (web.go) wraps it with the page's own script in one
// function scope; nothing here touches the global object.
//
// Client keeps one WebSocket on the JSON subprotocol (unigate.v1.json)
// alive the way docs/protocol.md section 7 asks, as protocol/client does
// in Go:
//   - hello with the token (or the tenant, anonymous), the resume token and
//     one cursor (highest seq processed) per conversation;
//   - reconnect with full-jitter backoff, random(0, min(30 s, 250 ms * 2^n)),
//     honouring "retry in N s" on close 1013 / 1008 (N plus a random quarter)
//     and spreading a drain (close 1001) over one second; no retry for what
//     retrying cannot fix (2000-2003, close 1008 without "retry in");
//   - bad_resume_token (2004): hello again without it (with o.resumeOnly,
//     a password session resuming after a reload, there is nothing else to
//     sign in with: failed, code 2000);
//   - every send stays pending until acked and is sent again, with the same
//     clientMsgId, after a reconnect; a replayed deliver at or below the
//     cursor is dropped, so the page sees each message once.
// Resume token, cursors and pending sends live in the storage given
// (sessionStorage by default), so a page reload continues the session.
//
// With o.secure ({module, suites, keys}; see secureFor) the connection
// runs the application-layer secure channel of docs/protocol.md
// ("Encrypted connections"): the client module (web/crypto: the build
// carrying the suites offered) is imported on first use, the handshake
// runs right after the upgrade, and from then on every envelope travels
// sealed in a record. A server that refuses a
// plaintext hello because it wants encryption (2003, "encrypt…") makes the
// client switch to o.secureFallback (the gateway's own keys) at once.

var SUBPROTOCOL = 'unigate.v1.json';
var SECURE_SWITCH = '\u0000secure'; // a refusal that moves us to the secure channel
var MIN_BACKOFF = 250, MAX_BACKOFF = 30000, DRAIN_SPREAD = 1000, HELLO_TIMEOUT = 10000;

function num(v) { return v === undefined || v === null || v === '' ? 0 : Number(v); }

function randomId() {
  var b = new Uint8Array(6);
  (window.crypto || {}).getRandomValues ? window.crypto.getRandomValues(b) : b.forEach(function (_, i) { b[i] = Math.random() * 256; });
  return Array.prototype.map.call(b, function (x) { return (x < 16 ? '0' : '') + x.toString(16); }).join('');
}

function storageOf(kind) {
  try {
    var s = window[kind || 'sessionStorage'];
    s.setItem('unigate.test', '1');
    s.removeItem('unigate.test');
    return s;
  } catch (e) {
    var mem = {};
    return { getItem: function (k) { return k in mem ? mem[k] : null; }, setItem: function (k, v) { mem[k] = String(v); }, removeItem: function (k) { delete mem[k]; } };
  }
}

function loadJSON(storage, key) {
  try { return JSON.parse(storage.getItem(key) || 'null'); } catch (e) { return null; }
}

function saveJSON(storage, key, v) {
  try { storage.setItem(key, JSON.stringify(v)); } catch (e) { /* full or denied: keep going in memory */ }
}

// wsURL turns an http(s) origin into the gateway's WebSocket URL.
function wsURL(origin) {
  return origin.replace(/^http/, 'ws').replace(/\/+$/, '') + '/ws';
}

// retryIn returns the milliseconds of a "retry in N s" in s, or 0.
function retryIn(s) {
  var m = /retry in (\d+) s/.exec(s || '');
  return m ? Number(m[1]) * 1000 : 0;
}

// b64 and unb64: the secure envelope's data (standard base64).
function b64(u8) {
  var s = '';
  for (var i = 0; i < u8.length; i += 0x8000) { s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000)); }
  return btoa(s);
}

function unb64(s) {
  var bin = atob(s || ''), u8 = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) { u8[i] = bin.charCodeAt(i); }
  return u8;
}

// Crypto client modules by URL, imported once per page.
var cryptoModules = {};

function loadCrypto(url) {
  if (!cryptoModules[url]) {
    cryptoModules[url] = import(url);
    cryptoModules[url].catch(function () { delete cryptoModules[url]; }); // try again on the next dial
  }
  return cryptoModules[url];
}

// secureFor returns a client's secure options: the suites to offer (names,
// in preference order), the server keys to pin ([{alg, publicKey (hex)}])
// and the build of the crypto client that carries those suites, from
// mods = {all, gm, intl} (URLs): GM alone and INTL-PQ alone have smaller
// builds than all three.
function secureFor(mods, suites, keys) {
  var only = function (name) { return suites.length > 0 && suites.every(function (s) { return s === name; }); };
  return { module: only('GM') ? mods.gm : only('INTL-PQ') ? mods.intl : mods.all, suites: suites, keys: keys || [] };
}

// wantsEncryption: a hello refused because the server wants the channel.
function wantsEncryption(e) {
  return e && e.code === 2003 && /encrypt/i.test(e.message || '');
}

function Client(o) {
  this.o = o;
  this.storage = o.storage || storageOf();
  this.key = o.storageKey || 'unigate.client';
  var st = loadJSON(this.storage, this.key) || {};
  this.resume = st.rt || '';
  this.cursors = st.cur || {};
  this.pending = st.pend || [];
  this.prefix = st.pfx || randomId();
  this.counter = st.n || 0;
  this.userId = st.uid || '';
  // A page that was switched to the channel once starts with it.
  this.secure = o.secure || (st.sec && o.secureFallback) || null;
  this.ticket = null; // resumption session of the channel, in memory only
  this.ws = null;
  this.ready = false;
  this.nextId = 0;
  this.waiters = {};
  this.attempt = 0;
  this.timer = 0;
  this.stopped = true;
  this.failed = null;
  this.stats = { dials: 0, reconnects: 0, resent: 0, duplicates: 0 };
  var self = this;
  this._online = function () {
    // The browser says the network is back: skip the rest of a backoff
    // (still jittered, within the first step).
    if (!self.stopped && !self.ws && !self.failed && self.timer && !self.serverWait) {
      clearTimeout(self.timer);
      self._schedule(Math.random() * MIN_BACKOFF);
    }
  };
  this._offline = function () {
    // Pings stop arriving long before TCP notices: give the socket up now.
    self._abandon();
  };
  // A page kept in the back/forward cache must not hold a connection (and
  // the server's per-address slot) while nobody sees it: close it on
  // pagehide, come back with the same session on pageshow.
  this._pagehide = function (ev) {
    if (ev.persisted && !self.stopped) { self.stop(); self.suspended = true; }
  };
  this._pageshow = function (ev) {
    if (ev.persisted && self.suspended) { self.suspended = false; self.start(); }
  };
  window.addEventListener('pagehide', this._pagehide);
  window.addEventListener('pageshow', this._pageshow);
}

Client.prototype._save = function () {
  saveJSON(this.storage, this.key, { rt: this.resume, cur: this.cursors, pend: this.pending, pfx: this.prefix, n: this.counter, uid: this.userId, sec: !!this.secure && !this.o.secure });
};

Client.prototype._emit = function (name) {
  var f = this.o['on' + name];
  if (f) { f.apply(null, Array.prototype.slice.call(arguments, 1)); }
};

Client.prototype._status = function (s, detail) {
  this.status = s;
  this._emit('Status', s, detail);
};

// start connects; the client then keeps itself connected until stop().
Client.prototype.start = function () {
  if (!this.stopped) { return; }
  this.stopped = false;
  this.failed = null;
  window.addEventListener('online', this._online);
  window.addEventListener('offline', this._offline);
  this._connect();
};

// stop closes the connection normally (1000) and does not reconnect.
// forget also drops the stored session (logout, or a new conversation).
Client.prototype.stop = function (forget) {
  this.stopped = true;
  clearTimeout(this.timer);
  this.timer = 0;
  window.removeEventListener('online', this._online);
  window.removeEventListener('offline', this._offline);
  if (this.ws) { try { this.ws.close(1000); } catch (e) { /* already closed */ } }
  this.ws = null;
  this.ready = false;
  this._failWaiters();
  if (forget) {
    this.resume = ''; this.cursors = {}; this.pending = []; this.userId = '';
    this.storage.removeItem(this.key);
  }
};

Client.prototype._connect = function () {
  var self = this;
  this.timer = 0;
  this.serverWait = false;
  this.stats.dials++;
  this._status('connecting', { secure: !!this.secure });
  var ws, link = { opened: false, sec: null };
  try {
    ws = new WebSocket(this.o.url, [SUBPROTOCOL]);
  } catch (e) {
    this._closed({ code: 1006, reason: String(e) }, link);
    return;
  }
  this.ws = ws;
  this.link = link;
  var helloTimer = 0;
  ws.onopen = function () {
    link.opened = true;
    helloTimer = setTimeout(function () { if (self.ws === ws) { self._abandon(); } }, HELLO_TIMEOUT);
    if (self.secure) { self._handshake(ws, link); } else { self._hello(ws); }
  };
  var gotEnv = function (env) {
    if (env.welcome || (env.error && env.id === self.helloId)) { clearTimeout(helloTimer); }
    self._handle(ws, env);
  };
  ws.onmessage = function (ev) {
    if (self.ws !== ws) { return; }
    if (link.sec) {
      // Records carry implicit sequence numbers: one at a time, in order.
      link.sec.rx = link.sec.rx.then(function () { return self._secureIn(ws, link, ev.data, gotEnv); });
      return;
    }
    var env;
    try { env = JSON.parse(ev.data); } catch (e) { return; }
    gotEnv(env);
  };
  ws.onclose = function (ev) {
    clearTimeout(helloTimer);
    if (self.ws === ws) { self._closed(ev, link); }
  };
};

// _handshake starts the secure channel on a fresh connection: ClientHello
// now, ServerHello and Finished in _secureIn, then the hello.
Client.prototype._handshake = function (ws, link) {
  var self = this, sec = this.secure;
  link.sec = { rx: Promise.resolve(), tx: Promise.resolve(), hs: null, conn: null, mod: null };
  link.sec.rx = loadCrypto(sec.module).then(function (mod) {
    link.sec.mod = mod;
    var keys = (sec.keys || []).map(function (k) { return { alg: k.alg, publicKey: mod.fromHex(k.publicKey) }; });
    var session = self.ticket && self.ticket.expiry > Date.now() ? self.ticket : null;
    self.ticket = null; // tickets are single use
    return mod.ClientHandshake.create({ suites: sec.suites || ['GM'], serverKeys: keys, session: session });
  }).then(function (hs) {
    link.sec.hs = hs;
    if (self.ws === ws) { ws.send(JSON.stringify({ secure: { data: b64(hs.hello) } })); }
  }, function (e) {
    if (self.ws !== ws) { return; }
    if (e && e.code) { self._secureFailed(e); return; }
    self._abandon(); // the module did not load: like a network failure
  });
};

// _secureIn handles one message of an encrypted connection.
Client.prototype._secureIn = function (ws, link, data, gotEnv) {
  var self = this, s = link.sec, env;
  if (this.ws !== ws || !s.hs) { return null; }
  try { env = JSON.parse(data); } catch (e) { env = null; }
  if (!env || !env.secure) {
    // A plaintext envelope: the server does not run the channel (1001), or
    // it refused us before the handshake (a limit: 4000 and a close).
    if (env && env.error && env.error.code === 4000) { this.refusal = env.error.message; return null; }
    this._secureFailed({ code: 0, plaintext: true, message: env && env.error ? env.error.message : 'plaintext' });
    return null;
  }
  var msg = unb64(env.secure.data);
  if (!s.conn) {
    return s.hs.handleServerHello(msg).then(function (r) {
      if (self.ws !== ws) { return; }
      s.conn = r.conn;
      // used: which primitives ran on WebCrypto and which on the @noble
      // fallbacks (no WebCrypto in an insecure context, or an old browser).
      self.secureInfo = { suite: r.conn.suite.name, resumed: !!r.conn.resumed, used: Object.assign({}, s.mod.used || {}) };
      ws.send(JSON.stringify({ secure: { data: b64(r.finished) } }));
      self._hello(ws);
    }).catch(function (e) { if (self.ws === ws) { self._secureFailed(e); } });
  }
  if (s.mod.isNewSessionTicket(msg)) {
    return s.hs.handleNewSessionTicket(msg).then(function (t) { self.ticket = t; }, function () { /* no resumption, nothing else lost */ });
  }
  return s.conn.open(msg).then(function (pt) {
    var inner;
    try { inner = JSON.parse(new TextDecoder().decode(pt)); } catch (e) { return; }
    if (self.ws === ws) { gotEnv(inner); }
  }).catch(function (e) {
    // A close record (33) ends the connection normally: the close follows.
    if (self.ws === ws && !(e && e.code === 33)) { self._secureFailed(e); }
  });
};

// _secureFailed: the channel could not be set up or a record did not open.
// A server key that does not match the pin, a bad signature or Finished,
// a record that does not open: someone may sit in between, so no retry
// (docs/protocol.md, "Encrypted connections").
Client.prototype._secureFailed = function (e) {
  this._fail({ secure: true, code: 0, cryptoCode: e && e.code, plaintext: !!(e && e.plaintext), message: String((e && e.message) || e) });
};

// _abandon gives up the current socket at once, as if the network had
// dropped it (a close handshake over a dead network only times out).
Client.prototype._abandon = function () {
  var ws = this.ws;
  if (!ws) { return; }
  ws.onclose = ws.onmessage = null;
  try { ws.close(); } catch (e) { /* gone */ }
  this._closed({ code: 1006, reason: '' }, this.link);
};

Client.prototype._hello = function (ws) {
  var cursors = [];
  for (var conv in this.cursors) {
    if (cursors.length < 256) { cursors.push({ conversationId: conv, lastSeq: String(this.cursors[conv]) }); }
  }
  var h = { clientName: this.o.clientName || 'web' };
  var cred = this.o.credentials;
  if (this.o.token) {
    h.token = this.o.token;
  } else if (cred && cred.username) {
    // Checked by the gateway's authentication hook (docs/backends.md).
    h.username = cred.username;
    h.password = cred.password;
  } else if (this.o.resumeOnly) {
    // A session the hook signed in, after a reload: the resume token alone.
    if (!this.resume) { this._fail({ code: 2000, message: 'no session to resume' }); return; }
  } else if (this.o.tenant) {
    h.tenant = this.o.tenant;
  }
  if (this.resume) { h.resumeToken = this.resume; }
  if (cursors.length) { h.cursors = cursors; }
  this.helloId = String(++this.nextId);
  this._write(ws, { id: this.helloId, hello: h });
};

Client.prototype._write = function (ws, env) {
  if (!ws || ws.readyState !== 1) { return false; }
  var s = this.link && this.ws === ws ? this.link.sec : null;
  if (s) {
    // Sealed in write order (implicit sequence numbers); a record lost to
    // a close is sent again after the reconnect like any pending send.
    if (!s.conn) { return false; }
    var self = this, pt = new TextEncoder().encode(JSON.stringify(env));
    s.tx = s.tx.then(function () { return s.conn.seal(pt); }).then(function (rec) {
      if (ws.readyState === 1) { ws.send(JSON.stringify({ secure: { data: b64(rec) } })); }
    }).catch(function (e) { if (self.ws === ws) { self._secureFailed(e); } });
    return true;
  }
  try { ws.send(JSON.stringify(env)); return true; } catch (e) { return false; }
};

// _closed decides when to come back (docs/protocol.md section 7). The
// status detail says why, for the page: kind "busy" (the server asked us
// to wait: close 1013, or 1008 with "retry in N s"), "unreachable" (the
// socket never opened: the server is down or refused the upgrade, e.g.
// 429/503, which a browser cannot see), "network" (a drop), "drain" (1001)
// or "secure" (switching to the secure channel).
Client.prototype._closed = function (ev, link) {
  var wasReady = this.ready;
  this.ws = null;
  this.link = null;
  this.ready = false;
  this._failWaiters();
  if (wasReady) { this.attempt = 0; }
  if (this.stopped || this.failed) { return; }
  var code = ev.code, reason = ev.reason || this.refusal || '';
  var toSecure = this.refusal === SECURE_SWITCH;
  this.refusal = '';
  var wait = retryIn(reason), d, kind;
  if (toSecure) {
    d = Math.random() * MIN_BACKOFF;
    kind = 'secure';
  } else if ((code === 1013 || code === 1008) && wait > 0) {
    d = wait + Math.random() * wait / 4;
    this.serverWait = true;
    kind = 'busy';
  } else if (code === 1013) {
    d = 1000 + Math.random() * 250;
    this.serverWait = true;
    kind = 'busy';
  } else if ((code === 1008 || code === 1002) && link && link.sec && /^secure channel:/.test(reason)) {
    // The gateway ended the handshake: no suite in common with what this
    // page offers (1008; e.g. a post-quantum-only policy), or a handshake
    // it could not accept (1002). Never a reason to fall back to clear.
    this._fail({ close: code, secure: true, refused: code === 1008, policy: code === 1008, message: reason });
    return;
  } else if (code === 1008 || code === 1002 || code === 1007 || code === 1009 || code === 1003) {
    this._fail({ close: code, message: reason, policy: code === 1008 });
    return;
  } else if (code === 1001) {
    d = Math.random() * DRAIN_SPREAD;
    kind = 'drain';
  } else {
    d = Math.random() * Math.min(MAX_BACKOFF, MIN_BACKOFF * Math.pow(2, Math.min(this.attempt, 30)));
    this.attempt++;
    kind = link && !link.opened ? 'unreachable' : 'network';
  }
  this._status('reconnecting', { inMillis: Math.round(d), at: Date.now() + Math.round(d), close: code, kind: kind, attempt: this.attempt });
  this._schedule(d);
};

Client.prototype._schedule = function (d) {
  var self = this;
  this.timer = setTimeout(function () { self._connect(); }, d);
};

Client.prototype._fail = function (err) {
  this.failed = err;
  if (this.ws) { try { this.ws.close(); } catch (e) { /* gone */ } }
  this.ws = null;
  this._status('failed', err);
};

Client.prototype._failWaiters = function () {
  var w = this.waiters;
  this.waiters = {};
  for (var id in w) { w[id].reject({ code: 0, disconnected: true, message: 'disconnected' }); }
};

Client.prototype._handle = function (ws, env) {
  if (env.welcome) { this._welcomed(ws, env.welcome); return; }
  if (env.error && env.id && env.id === this.helloId && !this.ready) {
    var e = env.error;
    if (e.code === 2004 && this.o.resumeOnly) {
      // The session is gone and there is nothing else to sign in with.
      this.resume = '';
      this._save();
      this._fail({ code: 2000, message: e.message });
      return;
    }
    if (e.code === 2004) {
      // The session is gone: start a new one on this connection.
      this.resume = '';
      this._save();
      this._emit('SessionLost');
      this._hello(ws);
      return;
    }
    if (e.code === 4000) { this.refusal = e.message; return; } // the close follows
    if (wantsEncryption(e) && !this.secure && this.o.secureFallback && this.o.secureFallback.module) {
      // The server wants the channel and told us its keys: the close
      // follows, then we dial again encrypted.
      this.secure = this.o.secureFallback;
      this.refusal = SECURE_SWITCH;
      this._save();
      return;
    }
    if (wantsEncryption(e)) { e = { code: 2003, message: e.message, needsSecure: true }; }
    if (!e.temporary) { this._fail(e); }
    return;
  }
  if (env.ack) { this._acked(env.ack); }
  if (env.deliver) {
    var d = env.deliver, seq = num(d.seq);
    if (seq <= num(this.cursors[d.conversationId])) {
      this.stats.duplicates++;
      return;
    }
    this.cursors[d.conversationId] = seq;
    if (d.clientMsgId && d.senderId === this.userId) {
      // Our own message, stored before a drop took its ack away.
      this._dropPending(d.conversationId, d.clientMsgId);
    }
    this._save();
  }
  if (env.conversation && env.conversation.conversationId && !(env.conversation.conversationId in this.cursors)) {
    this.cursors[env.conversation.conversationId] = 0;
    this._save();
  }
  if (env.error && env.id && this._sendFailed(env)) { return; }
  if (env.id && this.waiters[env.id]) {
    var w = this.waiters[env.id];
    delete this.waiters[env.id];
    if (env.error) { w.reject(env.error); return; }
    w.resolve(env);
  }
  this._emit('Event', env);
};

Client.prototype._welcomed = function (ws, w) {
  var first = !this.sessionId;
  var resumed = !!w.resumed;
  if (!resumed && this.userId && this.userId !== w.userId) {
    // A new identity: nothing of the old one applies.
    this.cursors = {};
    this.pending = [];
  }
  this.sessionId = w.sessionId;
  this.resume = w.resumeToken || '';
  this.userId = w.userId || '';
  this.welcome = w;
  (w.conversations || []).forEach(function (c) { if (!(c in this.cursors)) { this.cursors[c] = 0; } }, this);
  this.ready = true;
  if (!first) { this.stats.reconnects++; }
  this._save();
  this._status('online', w);
  this._emit('Welcome', w, resumed);
  var self = this;
  this.pending.forEach(function (p) {
    if (!first) { self.stats.resent++; }
    self._write(ws, { id: String(++self.nextId), send: { conversationId: p.conv, clientMsgId: p.cmid, text: p.text } });
  });
};

Client.prototype._dropPending = function (conv, cmid) {
  for (var i = 0; i < this.pending.length; i++) {
    if (this.pending[i].conv === conv && this.pending[i].cmid === cmid) {
      this.pending.splice(i, 1);
      return true;
    }
  }
  return false;
};

Client.prototype._acked = function (a) {
  var seq = num(a.seq);
  if (seq > num(this.cursors[a.conversationId])) { this.cursors[a.conversationId] = seq; }
  this._dropPending(a.conversationId, a.clientMsgId);
  this._save();
  this._emit('Ack', a);
};

// _sendFailed handles an error answering a send: temporary ones are sent
// again after a jittered delay; others drop the message.
Client.prototype._sendFailed = function (env) {
  var p = null;
  for (var i = 0; i < this.pending.length; i++) {
    if (this.pending[i].id === env.id) { p = this.pending[i]; break; }
  }
  if (!p) { return false; }
  var self = this, e = env.error;
  if (e.temporary || (e.code >= 4000 && e.code < 6000)) {
    setTimeout(function () {
      if (self.ready && self.pending.indexOf(p) >= 0) {
        p.id = String(++self.nextId);
        self._write(self.ws, { id: p.id, send: { conversationId: p.conv, clientMsgId: p.cmid, text: p.text } });
      }
    }, Math.max(retryIn(e.message), 500) * (1 + Math.random() / 4));
    return true;
  }
  this.pending.splice(this.pending.indexOf(p), 1);
  this._save();
  this._emit('SendFailed', { conversationId: p.conv, clientMsgId: p.cmid, text: p.text }, e);
  return true;
};

// send queues a chat message and returns its clientMsgId; the ack (or a
// deliver of the same message after a drop) arrives through onAck.
Client.prototype.send = function (conv, text) {
  this.counter++;
  var p = { id: String(++this.nextId), conv: conv, cmid: this.prefix + '-' + this.counter.toString(36), text: text, ts: Date.now() };
  this.pending.push(p);
  this._save();
  if (this.ready) { this._write(this.ws, { id: p.id, send: { conversationId: conv, clientMsgId: p.cmid, text: text } }); }
  return p.cmid;
};

// request sends a body (e.g. {open: {...}}) and resolves with the answer
// envelope, or rejects with the error (or {disconnected: true}).
Client.prototype.request = function (body) {
  var self = this;
  return new Promise(function (resolve, reject) {
    if (!self.ready) { reject({ code: 0, disconnected: true, message: 'not connected' }); return; }
    var id = String(++self.nextId);
    body.id = id;
    self.waiters[id] = { resolve: resolve, reject: reject };
    if (!self._write(self.ws, body)) {
      delete self.waiters[id];
      reject({ code: 0, disconnected: true, message: 'not connected' });
    }
  });
};

// notify sends a body that gets no answer (typing, read); dropped while
// disconnected.
Client.prototype.notify = function (body) {
  return this.ready && this._write(this.ws, body);
};

Client.prototype.pendingFor = function (conv) {
  return this.pending.filter(function (p) { return p.conv === conv; });
};

Client.prototype.lastSeq = function (conv) { return num(this.cursors[conv]); };

// errorText turns a protocol error into a sentence in the page's language;
// unknown codes are described by their range.
function errorText(t, e) {
  if (!e) { return ''; }
  if (e.disconnected) { return t.err_disconnected; }
  if (e.secure) { return e.refused ? t.err_secure_refused : e.plaintext ? t.err_secure_unsupported : t.err_secure; }
  if (e.needsSecure) { return t.err_needs_secure; }
  if (e.policy) { return t.err_policy; }
  if (e.close) { return t['err_close'] || t.err_2000; }
  var code = e.code || 0;
  return t['err_' + code] || t['err_' + Math.floor(code / 1000) * 1000] || t.err_5000;
}

// el builds an element: el('div', {class: 'x', 'aria-label': 'y'}, [children or text]).
function el(tag, attrs, kids) {
  var n = document.createElement(tag);
  for (var k in attrs || {}) {
    var v = attrs[k];
    if (v === undefined || v === null || v === false) { continue; }
    if (k === 'text') { n.textContent = v; } else if (k.slice(0, 2) === 'on') { n.addEventListener(k.slice(2), v); } else { n.setAttribute(k, v === true ? '' : v); }
  }
  (kids || []).forEach(function (c) { if (c !== null && c !== undefined) { n.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); } });
  return n;
}

// fmt fills {name} placeholders.
function fmt(s, v) { return s.replace(/\{(\w+)\}/g, function (_, k) { return v[k] === undefined ? '' : v[k]; }); }

// Transcript order: stored messages by seq; a notice after the seq that was
// current when it arrived; messages not yet acked last.
function sortKey(m) {
  if (m.k === 'n') { return [m.after, 1, m.n]; }
  return m.seq ? [m.seq, 0, 0] : [Infinity, 2, m.ts];
}

function cmp(a, b) {
  var x = sortKey(a), y = sortKey(b);
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2] || 0;
}

function timeOf(ms) {
  var d = new Date(num(ms) || Date.now());
  return (d.getHours() < 10 ? '0' : '') + d.getHours() + ':' + (d.getMinutes() < 10 ? '0' : '') + d.getMinutes();
}

// Shared sentences for protocol errors, in both languages.
var ERRORS = {
  en: {
    err_disconnected: 'Not connected. Your message will be sent when the connection is back.',
    err_close: 'The server ended the connection. Reload the page to try again.',
    err_policy: 'The service does not allow this connection (not allowed from this page, or the sign-in was refused).',
    err_secure: 'The encrypted connection could not be verified, so it was not used. Please contact the site owner.',
    err_secure_unsupported: 'The server did not accept an encrypted connection.',
    err_secure_refused: 'The server refused the encryption this page asks for (no cipher suite in common). Please contact the site owner.',
    err_needs_secure: 'This service accepts encrypted connections only, and this page does not set one up.',
    err_1000: 'The request was not understood.', err_1003: 'That message is too long.',
    err_2000: 'Please sign in again.', err_2001: 'Your sign-in is not valid.', err_2002: 'Your sign-in has expired. Please sign in again.',
    err_2003: 'You are not allowed to do that.', err_2004: 'Your previous session has expired.',
    err_3000: 'This conversation no longer exists.', err_3001: 'This conversation is closed.', err_3002: 'You are not part of this conversation.',
    err_3004: 'No agent is available right now.', err_3005: 'You already have an open conversation.', err_3006: 'That is not possible in the current state.',
    err_4000: 'Too many messages at once. Retrying shortly.', err_4001: 'The waiting queue is full. Please try again in a few minutes.', err_4002: 'The service is busy. Retrying shortly.',
    err_5000: 'Something went wrong on our side. Please try again.', err_5001: 'The service is temporarily unavailable.', err_5002: 'The service is restarting. Reconnecting.'
  },
  zh: {
    err_disconnected: '连接已断开，恢复后将自动发送消息。',
    err_close: '服务器已断开连接，请刷新页面重试。',
    err_policy: '服务不允许此连接（不允许从此页面访问，或登录被拒绝）。',
    err_secure: '加密连接未能通过验证，已停止使用。请联系网站管理员。',
    err_secure_unsupported: '服务器不接受加密连接。',
    err_secure_refused: '服务器拒绝了本页面请求的加密方式（没有共同支持的加密套件）。请联系网站管理员。',
    err_needs_secure: '此服务只接受加密连接，但本页面未配置加密。',
    err_1000: '请求无法识别。', err_1003: '消息太长。',
    err_2000: '请重新登录。', err_2001: '登录凭证无效。', err_2002: '登录已过期，请重新登录。',
    err_2003: '您无权执行此操作。', err_2004: '之前的会话已过期。',
    err_3000: '该会话已不存在。', err_3001: '该会话已结束。', err_3002: '您不是该会话的参与者。',
    err_3004: '暂时没有可用的客服。', err_3005: '您已有一个进行中的会话。', err_3006: '当前状态下无法执行此操作。',
    err_4000: '消息发送过于频繁，稍后将自动重试。', err_4001: '排队人数已满，请几分钟后再试。', err_4002: '服务繁忙，稍后将自动重试。',
    err_5000: '服务出现问题，请重试。', err_5001: '服务暂时不可用。', err_5002: '服务正在重启，正在重新连接。'
  }
};

function strings(lang, table) {
  var zh = /^zh/i.test(lang || '');
  var base = zh ? ERRORS.zh : ERRORS.en, own = zh ? table.zh : table.en, out = {};
  for (var k in base) { out[k] = base[k]; }
  for (var j in own) { out[j] = own[j]; }
  out.lang = zh ? 'zh-CN' : 'en';
  return out;
}
