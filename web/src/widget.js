// widget.js: the visitor chat widget. Added to a page with
//   <script src="<gateway origin>/widget/unigate-widget.js"
//           data-tenant="acme" data-lang="zh-CN" async></script>
// Attributes: data-server (gateway origin; default: where the script came
// from), data-tenant, data-lang (zh-CN or en; default: the browser's),
// data-token (a signed visitor token; default: anonymous), data-skill,
// data-region (sent in open, for routing), data-title, data-color,
// data-open ("true": start opened), data-crypto (run the secure channel
// with these suites: "gm", "gm-pq", "intl-pq", several separated by
// commas, in preference order) with data-crypto-key (the gateway's public
// keys to pin, hex, from unigate keygen: SM2 for the GM suites, Ed25519
// for INTL-PQ; several separated by commas).
// SERVER (bound by web.go) is what the gateway says of itself: whether it
// requires the secure channel, its suites and keys, the crypto client's
// builds (URLs).
// Everything lives in an open shadow root, so the host page's CSS cannot
// reach it; styles are a constructed stylesheet (no inline style, so a
// strict style-src works).

var VERSION = '1.0.0';

var TEXT = {
  en: {
    title: 'Chat with us', open_chat: 'Open chat', close_chat: 'Minimise chat', end_chat: 'End conversation',
    input_label: 'Type your message', placeholder: 'Type a message… (Enter to send)', send: 'Send',
    welcome: 'Hello! How can we help you today?',
    you: 'You', agent: 'Agent', bot: 'Assistant', system: 'Notice',
    st_pending: 'Sending…', st_sent: 'Sent', st_read: 'Read', st_failed: 'Not sent',
    conn_connecting: 'Connecting…', conn_reconnecting: 'Connection lost. Reconnecting…', conn_online: 'Online', conn_failed: 'Chat unavailable',
    queue: 'You are number {n} in the queue.', queue_next: 'You are next in the queue.', eta: 'Estimated wait: about {m} min.',
    typing: '{who} is typing…',
    n_bot: 'You are chatting with our virtual assistant.', n_handoff: 'Connecting you to a human agent…',
    n_queued: 'Waiting for an agent. You can keep writing; they will see your messages.',
    n_assigned: 'Agent {a} joined the conversation.', n_transferred: 'You are being transferred to another agent.',
    n_closed: 'The conversation has ended.', n_reason: 'Reason: {r}', n_lost: 'Your previous conversation has expired.',
    new_chat: 'Start a new conversation', unread: '{n} new messages',
    leave_msg: 'No agent is available right now. Leave a message and we will answer as soon as possible.',
    bot_tag: 'Bot', human: 'Talk to a human', human_msg: 'Talk to a human',
    n_handoff_low: 'The assistant could not answer that. Connecting you to a human agent…',
    leave_title: 'No agent is online right now.', leave_help: 'Leave your message here; it is kept, and an agent will answer as soon as one is online.',
    contact_label: 'Email or phone (optional)', contact_prefix: 'Contact: ', n_left: 'Message left. An agent will reply when one is online.',
    eta_soon: 'Estimated wait: under a minute.',
    conn_busy: 'The service is busy. Retrying in {s} s…', conn_unreachable: 'Cannot reach the service (it may be busy). Retrying in {s} s…',
    conn_network: 'Connection lost. Reconnecting in {s} s…', conn_drain: 'The service is restarting. Reconnecting…', conn_secure: 'Setting up an encrypted connection…',
    conn_online_secure: 'Online · encrypted ({suite})', conn_refused: 'Not allowed',
    err_2003: 'This chat is not available here (not allowed).'
  },
  zh: {
    title: '在线客服', open_chat: '打开聊天', close_chat: '收起聊天', end_chat: '结束会话',
    input_label: '输入消息', placeholder: '输入消息…（回车发送）', send: '发送',
    welcome: '您好！请问有什么可以帮您？',
    you: '我', agent: '客服', bot: '智能助手', system: '通知',
    st_pending: '发送中…', st_sent: '已发送', st_read: '已读', st_failed: '发送失败',
    conn_connecting: '正在连接…', conn_reconnecting: '连接已断开，正在重连…', conn_online: '在线', conn_failed: '暂时无法使用',
    queue: '您前面还有 {n} 位，正在排队。', queue_next: '下一位就是您。', eta: '预计等待约 {m} 分钟。',
    typing: '{who}正在输入…',
    n_bot: '您正在与智能助手对话。', n_handoff: '正在为您转接人工客服…',
    n_queued: '正在等待客服接入，您可以继续留言，客服接入后会看到。',
    n_assigned: '客服 {a} 已接入会话。', n_transferred: '正在为您转接其他客服。',
    n_closed: '会话已结束。', n_reason: '原因：{r}', n_lost: '之前的会话已过期。',
    new_chat: '开始新的会话', unread: '{n} 条新消息',
    leave_msg: '暂时没有客服在线。请留言，我们会尽快回复您。',
    bot_tag: '机器人', human: '转人工', human_msg: '转人工',
    n_handoff_low: '智能助手暂时无法回答这个问题，正在为您转接人工客服…',
    leave_title: '暂时没有客服在线。', leave_help: '请在此留言，留言会被保存，客服上线后会尽快回复您。',
    contact_label: '邮箱或电话（选填）', contact_prefix: '联系方式：', n_left: '留言成功，客服上线后会回复您。',
    eta_soon: '预计等待不到 1 分钟。',
    conn_busy: '服务繁忙，{s} 秒后重试…', conn_unreachable: '无法连接服务（可能繁忙），{s} 秒后重试…',
    conn_network: '连接已断开，{s} 秒后重连…', conn_drain: '服务正在重启，正在重新连接…', conn_secure: '正在建立加密连接…',
    conn_online_secure: '在线 · 已加密（{suite}）', conn_refused: '不允许访问',
    err_2003: '此页面无法使用在线客服（不允许访问）。'
  }
};

var CSS = [
  ':host{all:initial}',
  '*{box-sizing:border-box}',
  '.root{all:initial;--ug:var(--ug-color,#1759c7);font:14px/1.45 system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;color:#1b1f24;position:fixed;right:20px;bottom:20px;z-index:2147483000}',
  '.launcher{width:56px;height:56px;border-radius:50%;border:0;background:var(--ug);color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center;position:relative}',
  '.launcher svg{width:28px;height:28px;fill:currentColor}',
  '.badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;border-radius:10px;background:#d1242f;color:#fff;font-size:12px;line-height:20px;padding:0 5px}',
  'button:focus-visible,textarea:focus-visible{outline:3px solid #f0b400;outline-offset:2px}',
  '.panel{position:absolute;right:0;bottom:72px;width:360px;max-width:calc(100vw - 24px);height:540px;max-height:calc(100vh - 110px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.28);display:flex;flex-direction:column;overflow:hidden}',
  '.panel[hidden]{display:none}',
  '.head{background:var(--ug);color:#fff;padding:10px 12px;display:flex;align-items:center;gap:8px}',
  '.head h2{font-size:15px;margin:0;font-weight:600}',
  '.head .subline{font-size:12px;opacity:.9}.head .sub{display:inline}',
  '.head .grow{flex:1;min-width:0}',
  '.dot{display:inline-block;width:8px;height:8px;border-radius:50%;background:#9aa4ae;margin-right:5px}',
  '.root[data-conn=online] .dot{background:#3fd07a}.root[data-conn=reconnecting] .dot{background:#f0b400}.root[data-conn=failed] .dot{background:#ff6b6b}',
  '.icon{background:transparent;border:0;color:#fff;cursor:pointer;font-size:13px;padding:6px 8px;border-radius:6px}',
  '.icon:hover{background:rgba(255,255,255,.18)}',
  '.banner{background:#eef4ff;color:#133d83;padding:8px 12px;font-size:13px;border-bottom:1px solid #d8e4fb}',
  '.banner:empty{display:none}',
  '.alert{background:#fff1f0;color:#a1141d;padding:8px 12px;font-size:13px}',
  '.alert:empty{display:none}',
  '.log{flex:1;overflow-y:auto;padding:12px;background:#f6f8fa;display:flex;flex-direction:column;gap:8px}',
  '.msg{max-width:82%;display:flex;flex-direction:column}',
  '.msg .who{font-size:11px;color:#57606a;margin:0 4px 2px}',
  '.msg .bubble{padding:8px 11px;border-radius:12px;background:#fff;border:1px solid #e1e4e8;white-space:pre-wrap;word-wrap:break-word}',
  '.msg.mine{align-self:flex-end;align-items:flex-end}',
  '.msg.mine .bubble{background:var(--ug);color:#fff;border-color:transparent}',
  '.msg.bot .bubble{background:#f3efff;border-color:#dcd2fb}',
  '.tag{display:inline-block;margin-left:4px;padding:0 5px;border-radius:6px;background:#6639ba;color:#fff;font-size:10px;line-height:15px;vertical-align:1px}',
  '.quick{display:flex;justify-content:flex-end;padding:6px 10px 0;background:#fff;border-top:1px solid #e1e4e8}',
  '.quick[hidden]{display:none}',
  '.human{background:#fff;border:1px solid var(--ug);color:var(--ug);border-radius:14px;padding:3px 12px;cursor:pointer;font:inherit;font-size:13px}',
  '.leave{background:#fff8e6;color:#5c3c00;padding:8px 12px;font-size:13px;border-top:1px solid #f0d58a;display:flex;flex-direction:column;gap:4px}',
  '.leave[hidden]{display:none}',
  '.leave strong{font-weight:600}',
  '.leave input{font:inherit;border:1px solid #d0d7de;border-radius:6px;padding:5px 8px}',
  'input:focus-visible{outline:3px solid #f0b400;outline-offset:2px}',
  '.msg .meta{font-size:11px;color:#6e7781;margin:2px 4px 0}',
  '.msg.failed .meta{color:#a1141d}',
  '.note{align-self:center;text-align:center;font-size:12px;color:#57606a;background:#eaeef2;border-radius:10px;padding:4px 10px;max-width:90%}',
  '.msg.system{align-self:center;max-width:90%}.msg.system .bubble{background:#fff8c5;border-color:#eed888;font-size:13px}',
  '.typing{font-size:12px;color:#57606a;padding:0 14px 4px;min-height:18px;background:#f6f8fa}',
  '.compose{display:flex;gap:8px;padding:10px;border-top:1px solid #e1e4e8;background:#fff}',
  '.compose textarea{flex:1;resize:none;border:1px solid #d0d7de;border-radius:8px;padding:8px;font:inherit;height:42px;max-height:120px}',
  '.send{background:var(--ug);color:#fff;border:0;border-radius:8px;padding:0 14px;cursor:pointer;font:inherit}',
  '.send:disabled{opacity:.5;cursor:default}',
  '.restart{margin:8px auto;background:#fff;border:1px solid var(--ug);color:var(--ug);border-radius:8px;padding:6px 12px;cursor:pointer;font:inherit}',
  '.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}',
  '@media (prefers-reduced-motion:no-preference){.panel{transition:opacity .15s}}'
].join('\n');

function svgIcon() {
  var ns = 'http://www.w3.org/2000/svg';
  var svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  var p = document.createElementNS(ns, 'path');
  p.setAttribute('d', 'M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6v2h2V9H7zm4 0v2h2V9h-2zm4 0v2h2V9h-2z');
  svg.appendChild(p);
  return svg;
}

// The suites data-crypto may name.
var SUITES = { gm: 'GM', 'gm-pq': 'GM-PQ', 'intl-pq': 'INTL-PQ' };

// secureConfig returns the client's secure options: the page's choice
// (data-crypto, pinned keys) and the gateway's (SERVER.crypto: the suites
// it accepts with a key, its keys, the client builds). Driven by the
// gateway, the widget offers the gateway's preferred suite alone (its
// build is the smallest that carries it).
function secureConfig(cfg) {
  var sc = (typeof SERVER === 'object' && SERVER && SERVER.crypto) || null;
  var m = sc && sc.modules;
  var mods = m ? { all: cfg.server + m.all, gm: cfg.server + m.gm, intl: cfg.server + m.intl }
    : { all: cfg.server + '/widget/unigate-crypto.js', gm: cfg.server + '/widget/unigate-crypto-gm.js', intl: cfg.server + '/widget/unigate-crypto-intl.js' };
  var server = m && sc.suites && sc.suites.length ? secureFor(mods, [sc.suites[0]], sc.keys) : null;
  var page = null;
  var names = (cfg.crypto || '').split(/[\s,]+/).filter(Boolean);
  if (names.length) {
    // An unknown name is kept: the client refuses it (a configuration
    // error on screen) rather than the widget talking in clear.
    var suites = names.map(function (n) { return SUITES[n.toLowerCase()] || n; });
    // The key's length says its algorithm: 65 bytes (an SM2 point) or 32
    // (Ed25519).
    var pinned = (cfg.cryptoKey || '').split(/[\s,]+/).filter(Boolean).map(function (k) {
      return { alg: k.length === 64 ? 'Ed25519' : 'SM2', publicKey: k.toLowerCase() };
    });
    page = secureFor(mods, suites, pinned.length ? pinned : sc ? sc.keys : []);
  }
  return { secure: page || (sc && sc.required ? server : null), fallback: page || server };
}

function Widget(cfg) {
  this.cfg = cfg;
  this.t = strings(cfg.lang, TEXT);
  this.storage = storageOf('sessionStorage');
  this.key = 'unigate.widget.' + cfg.server + '.' + (cfg.tenant || '') + (cfg.token ? '.t' : '');
  var st = loadJSON(this.storage, this.key) || {};
  this.conv = st.conv || null; // {id, state, agentId, skill, reason, pos, eta}
  this.items = st.items || [];
  this.isOpen = !!st.open || cfg.open;
  this.readSent = st.readSent || 0;
  this.peerRead = st.peerRead || 0;
  this.unread = st.unread || 0;
  this.waiting = st.waiting || []; // texts written before a conversation exists
  this.noteN = st.noteN || 0;
  this.done = st.done || []; // closed conversations the visitor put away
  this.contactSent = st.contactSent || '';
  this.leftNote = st.leftNote || '';
  this.nodes = new Map();
  this.opening = false;
  var self = this, sec = secureConfig(cfg);
  this.client = new Client({
    url: wsURL(cfg.server), token: cfg.token, tenant: cfg.tenant, clientName: 'widget/' + VERSION,
    storage: this.storage, storageKey: this.key + '.session', secure: sec.secure, secureFallback: sec.fallback,
    onStatus: function (s, d) { self.onStatus(s, d); },
    onWelcome: function (w, resumed) { self.onWelcome(w, resumed); },
    onEvent: function (env) { self.onEvent(env); },
    onAck: function (a) { self.onAck(a); },
    onSendFailed: function (p, e) { self.onSendFailed(p, e); },
    onSessionLost: function () { self.lost(); }
  });
  this.build();
  this.render();
  this.client.start();
}

Widget.prototype.save = function () {
  var items = this.items.length > 300 ? this.items.slice(-300) : this.items;
  saveJSON(this.storage, this.key, { conv: this.conv, items: items, open: this.isOpen, readSent: this.readSent, peerRead: this.peerRead, unread: this.unread, waiting: this.waiting, noteN: this.noteN, done: this.done.slice(-20),
    contactSent: this.contactSent, leftNote: this.leftNote });
};

Widget.prototype.build = function () {
  var t = this.t, self = this;
  // A tag of its own: host rules written for div, section, etc. miss it.
  var host = el('unigate-widget', { id: 'unigate-widget', 'data-unigate': VERSION });
  this.host = host;
  var root = host.attachShadow({ mode: 'open' });
  this.shadow = root;
  if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet) {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } else {
    root.appendChild(el('style', { text: CSS }));
  }
  this.box = el('div', { class: 'root', lang: t.lang, 'data-conn': 'connecting' });
  if (this.cfg.color) { this.box.style.setProperty('--ug-color', this.cfg.color); }
  this.badge = el('span', { class: 'badge', hidden: true, 'aria-hidden': 'true' });
  this.launcher = el('button', { class: 'launcher', type: 'button', 'aria-controls': 'ug-panel', 'aria-expanded': 'false', 'aria-label': t.open_chat,
    onclick: function () { self.toggle(); } }, [svgIcon(), this.badge]);
  // The status line ticks while waiting to reconnect; screen readers get
  // each change once, from the hidden live region.
  this.sub = el('div', { class: 'sub', 'aria-hidden': 'true' });
  this.live = el('div', { class: 'sr', role: 'status' });
  this.endBtn = el('button', { class: 'icon end', type: 'button', text: t.end_chat, onclick: function () { self.end(); } });
  var minBtn = el('button', { class: 'icon min', type: 'button', 'aria-label': t.close_chat, text: '—', onclick: function () { self.toggle(false); } });
  var title = el('h2', { id: 'ug-title', text: this.cfg.title || t.title });
  this.banner = el('div', { class: 'banner', role: 'status', 'aria-live': 'polite' });
  this.alert = el('div', { class: 'alert', role: 'alert' });
  this.log = el('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-label': this.cfg.title || t.title, tabindex: '0' });
  this.typingEl = el('div', { class: 'typing', 'aria-live': 'polite' });
  this.input = el('textarea', { id: 'ug-input', rows: '1', 'aria-label': t.input_label, placeholder: t.placeholder, maxlength: '4000' });
  this.sendBtn = el('button', { class: 'send', type: 'submit', text: t.send });
  var form = el('form', { class: 'compose', onsubmit: function (e) { e.preventDefault(); self.submit(); } }, [this.input, this.sendBtn]);
  this.humanBtn = el('button', { class: 'human', type: 'button', text: t.human, onclick: function () { self.submit(t.human_msg); } });
  this.quick = el('div', { class: 'quick' }, [this.humanBtn]);
  this.contact = el('input', { id: 'ug-contact', type: 'text', autocomplete: 'email', maxlength: '200' });
  this.leave = el('div', { class: 'leave', role: 'region', 'aria-labelledby': 'ug-leave-title', hidden: true }, [
    el('strong', { id: 'ug-leave-title', text: t.leave_title }),
    el('span', { text: t.leave_help }),
    el('label', { for: 'ug-contact', text: t.contact_label }),
    this.contact
  ]);
  this.input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.submit(); }
  });
  this.input.addEventListener('input', function () { self.typed(); });
  this.panel = el('div', { class: 'panel', id: 'ug-panel', role: 'dialog', 'aria-modal': 'false', 'aria-labelledby': 'ug-title', hidden: true }, [
    el('div', { class: 'head' }, [el('div', { class: 'grow' }, [title, el('div', { class: 'subline' }, [el('span', { class: 'dot', 'aria-hidden': 'true' }), this.sub, this.live])]), this.endBtn, minBtn]),
    this.banner, this.alert, this.log, this.typingEl, this.leave, this.quick, form
  ]);
  this.panel.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { e.stopPropagation(); self.toggle(false); self.launcher.focus(); }
  });
  this.box.appendChild(this.panel);
  this.box.appendChild(this.launcher);
  root.appendChild(this.box);
  document.body.appendChild(host);
  document.addEventListener('visibilitychange', function () { self.markRead(); });
};

Widget.prototype.toggle = function (open) {
  this.isOpen = open === undefined ? !this.isOpen : open;
  if (this.isOpen) { this.unread = 0; }
  this.save();
  this.render();
  if (this.isOpen) {
    this.input.focus();
    this.log.scrollTop = this.log.scrollHeight;
    this.markRead();
  }
};

Widget.prototype.onStatus = function (s, d) {
  var self = this;
  this.conn = s;
  this.connDetail = d || {};
  clearInterval(this.tick);
  if (s === 'reconnecting' && this.connDetail.at) {
    // A visible countdown; render() leaves the live region alone.
    this.tick = setInterval(function () { self.renderConn(); }, 1000);
  }
  if (s === 'failed') { this.showError(d); }
  if (s === 'online') { this.showError(null); }
  this.render();
};

// connText is the status line: connection state, and why and how long
// when waiting to reconnect.
Widget.prototype.connText = function (live) {
  var t = this.t, d = this.connDetail || {}, conn = this.conn || 'connecting';
  if (conn === 'online' && this.client.secureInfo) { return fmt(t.conn_online_secure, { suite: this.client.secureInfo.suite }); }
  if (conn === 'failed') { return d.policy || d.code === 2003 ? t.conn_refused : t.conn_failed; }
  if (conn === 'reconnecting') {
    var left = Math.max(0, Math.ceil(((live ? d.inMillis : d.at - Date.now()) || 0) / 1000));
    var k = { busy: 'conn_busy', unreachable: 'conn_unreachable', network: 'conn_network', drain: 'conn_drain', secure: 'conn_secure' }[d.kind] || 'conn_network';
    return fmt(t[k], { s: left });
  }
  if (conn === 'connecting' && d.secure) { return t.conn_secure; }
  return t['conn_' + conn] || '';
};

Widget.prototype.renderConn = function () {
  var v = this.connText(false);
  if (this.sub.textContent !== v) { this.sub.textContent = v; }
};

Widget.prototype.showError = function (e) {
  this.alert.textContent = e ? errorText(this.t, e) : '';
};

Widget.prototype.onWelcome = function (w, resumed) {
  var convs = w.conversations || [];
  if (this.conv && this.conv.state !== 'STATE_CLOSED' && convs.indexOf(this.conv.id) < 0) {
    // The server no longer knows our conversation (the session expired).
    this.lost();
  }
  var done = this.done;
  convs = convs.filter(function (c) { return done.indexOf(c) < 0; });
  if (!this.conv && convs.length) {
    // A token visitor on a new page, or a resumed session we had forgotten.
    this.conv = { id: convs[0], state: '' };
  }
  if (!this.conv && this.waiting.length) { this.openConversation(); }
  this.save();
  this.render();
  this.markRead();
};

Widget.prototype.lost = function () {
  if (this.conv && this.conv.state !== 'STATE_CLOSED') {
    this.note(this.t.n_lost);
    this.conv = null;
    this.save();
    this.render();
  }
};

Widget.prototype.note = function (text) {
  this.items.push({ k: 'n', n: ++this.noteN, after: this.conv ? this.client.lastSeq(this.conv.id) : 0, text: text });
};

Widget.prototype.find = function (f) {
  for (var i = 0; i < this.items.length; i++) { if (f(this.items[i])) { return this.items[i]; } }
  return null;
};

Widget.prototype.onEvent = function (env) {
  var t = this.t;
  if (env.conversation) {
    var c = env.conversation, prev = this.conv || {};
    if ((this.conv && this.conv.id && this.conv.id !== c.conversationId) || this.done.indexOf(c.conversationId) >= 0) { return; }
    var st = c.state || '', changed = prev.state !== st, agentNew = c.agentId && c.agentId !== prev.agentId;
    if (changed || agentNew) {
      if (st === 'STATE_BOT' && changed) { this.note(t.n_bot); }
      if (st === 'STATE_QUEUED' && changed) {
        if (c.reason === 'no_agent_online') {
          this.note(t.leave_title + ' ' + t.leave_help);
        } else if (prev.state === 'STATE_BOT') {
          this.note(c.reason === 'low_confidence' ? t.n_handoff_low : t.n_handoff);
        } else {
          this.note(t.n_queued);
        }
      }
      if (st === 'STATE_TRANSFERRED' && changed) { this.note(t.n_transferred); }
      if ((st === 'STATE_ASSIGNED' || st === 'STATE_TRANSFERRED') && agentNew) { this.note(fmt(t.n_assigned, { a: c.agentId })); }
      if (st === 'STATE_CLOSED' && changed) {
        this.note(t.n_closed + (c.reason ? ' ' + fmt(t.n_reason, { r: c.reason }) : ''));
      }
    }
    this.conv = { id: c.conversationId, state: st, agentId: c.agentId || '', skill: c.skill || '', reason: c.reason || '', pos: st === 'STATE_QUEUED' ? prev.pos || 0 : 0, eta: prev.eta || 0 };
    if (st !== 'STATE_QUEUED') { this.conv.pos = 0; this.conv.eta = 0; }
    if (st === 'STATE_CLOSED') { this.setTyping(false); }
  } else if (env.queue && this.conv && env.queue.conversationId === this.conv.id) {
    this.conv.pos = env.queue.position || 0;
    this.conv.eta = env.queue.etaSeconds || 0;
  } else if (env.deliver) {
    this.deliver(env.deliver);
  } else if (env.typing && env.typing.senderRole !== 'ROLE_VISITOR') {
    this.setTyping(env.typing.on, env.typing.senderRole);
  } else if (env.read && env.read.senderRole !== 'ROLE_VISITOR') {
    this.peerRead = Math.max(this.peerRead, num(env.read.seq));
  } else if (env.error && !env.id) {
    this.showError(env.error);
  }
  this.save();
  this.render();
};

Widget.prototype.deliver = function (d) {
  var seq = num(d.seq);
  if (this.find(function (m) { return m.k === 'm' && m.seq === seq; })) { return; }
  var mine = d.senderRole === 'ROLE_VISITOR';
  var own = mine && d.clientMsgId ? this.find(function (m) { return m.k === 'm' && m.mine && m.cmid === d.clientMsgId; }) : null;
  if (own) {
    own.seq = seq; own.st = 'sent'; own.ts = num(d.timestampMilli);
    return;
  }
  var role = { ROLE_AGENT: 'agent', ROLE_BOT: 'bot', ROLE_SYSTEM: 'system' }[d.senderRole] || (mine ? 'visitor' : 'agent');
  this.items.push({ k: 'm', seq: seq, cmid: d.clientMsgId || '', role: role, mine: mine, who: d.senderId || '', text: d.text || '', ts: num(d.timestampMilli), st: 'sent' });
  if (!mine) {
    this.setTyping(false);
    if (!this.isOpen || document.visibilityState === 'hidden') { this.unread++; }
  }
  this.markRead();
};

Widget.prototype.onAck = function (a) {
  var m = this.find(function (x) { return x.k === 'm' && x.mine && x.cmid === a.clientMsgId; });
  if (m) { m.seq = num(a.seq); m.st = 'sent'; m.ts = num(a.timestampMilli); }
  this.save();
  this.render();
};

Widget.prototype.onSendFailed = function (p, e) {
  var m = this.find(function (x) { return x.k === 'm' && x.mine && x.cmid === p.clientMsgId; });
  if (m) { m.st = 'failed'; }
  this.showError(e);
  this.save();
  this.render();
};

Widget.prototype.setTyping = function (on, role) {
  var self = this;
  clearTimeout(this.typingTimer);
  this.typingEl.textContent = on ? fmt(this.t.typing, { who: role === 'ROLE_BOT' ? this.t.bot : this.t.agent }) : '';
  this.box.setAttribute('data-typing', on ? 'on' : 'off');
  if (on) { this.typingTimer = setTimeout(function () { self.setTyping(false); }, 6000); }
};

// markRead sends a read receipt up to the newest message when the visitor
// can see it.
Widget.prototype.markRead = function () {
  if (!this.conv || !this.isOpen || document.visibilityState === 'hidden' || !this.client.ready) { return; }
  var last = 0, theirs = false, self = this;
  this.items.forEach(function (m) {
    if (m.k === 'm' && m.seq) { last = Math.max(last, m.seq); if (!m.mine && m.seq > self.readSent) { theirs = true; } }
  });
  if (theirs && last > this.readSent && last <= this.client.lastSeq(this.conv.id)) {
    this.readSent = last;
    this.client.notify({ read: { conversationId: this.conv.id, seq: String(last) } });
    this.save();
  }
};

Widget.prototype.typed = function () {
  var self = this;
  if (!this.conv || this.conv.state === 'STATE_CLOSED' || !this.client.ready) { return; }
  if (!/\S/.test(this.input.value)) { this.stopTyping(); return; }
  var now = Date.now();
  if (!this.typingOn || now - this.typingSent > 3000) {
    this.typingOn = true;
    this.typingSent = now;
    this.client.notify({ typing: { conversationId: this.conv.id, on: true } });
  }
  clearTimeout(this.typingStop);
  this.typingStop = setTimeout(function () { self.stopTyping(); }, 2500);
};

Widget.prototype.stopTyping = function () {
  clearTimeout(this.typingStop);
  if (this.typingOn && this.conv) {
    this.typingOn = false;
    this.client.notify({ typing: { conversationId: this.conv.id, on: false } });
  }
};

// submit sends what the visitor wrote (or text, e.g. the "talk to a
// human" button's message) through the normal send path.
Widget.prototype.submit = function (text) {
  var fromInput = text === undefined;
  text = (fromInput ? this.input.value : text).replace(/^\s+|\s+$/g, '');
  if (!text) { return; }
  if (fromInput) { this.input.value = ''; }
  this.stopTyping();
  if (this.conv && this.conv.state === 'STATE_CLOSED') { this.restart(); }
  if (this.conv) {
    if (this.leaving()) {
      // Leave a message: the contact goes first, once per value.
      var contact = this.contact.value.replace(/^\s+|\s+$/g, '');
      if (contact && contact !== this.contactSent) {
        this.contactSent = contact;
        this.post(this.t.contact_prefix + contact);
      }
    }
    this.post(text);
    if (this.leaving() && this.leftNote !== this.conv.id) {
      this.leftNote = this.conv.id;
      this.note(this.t.n_left);
    }
  } else {
    var w = { k: 'm', cmid: 'w' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), role: 'visitor', mine: true, text: text, ts: Date.now(), st: 'pending', wait: true };
    this.items.push(w);
    this.waiting.push(w.cmid);
    this.openConversation();
  }
  this.save();
  this.render();
};

// leaving: no agent is online; what the visitor writes is kept for the
// first agent who comes online (reason no_agent_online).
Widget.prototype.leaving = function () {
  return !!this.conv && this.conv.state === 'STATE_QUEUED' && this.conv.reason === 'no_agent_online';
};

// visitorContext is what open tells the agent and the router about the
// visitor: region (data-region), language (data-lang, else the
// browser's), page (origin and path: the query and fragment may carry
// personal data).
Widget.prototype.visitorContext = function () {
  var c = {}, cfg = this.cfg;
  if (cfg.region) { c.region = cfg.region.slice(0, 64); }
  if (cfg.lang) { c.language = cfg.lang.slice(0, 35); }
  try { c.page = (location.origin + location.pathname).slice(0, 1024); } catch (e) { /* opaque origin */ }
  return c;
};

// openConversation opens a conversation for the messages written before
// one existed, then sends them.
Widget.prototype.openConversation = function () {
  var self = this;
  if (this.opening || this.conv || !this.client.ready) { return; }
  this.opening = true;
  var open = this.visitorContext();
  if (this.cfg.skill) { open.skill = this.cfg.skill; }
  this.client.request({ open: open }).then(function () {
    // The answer went through onEvent already (it is a conversation event).
    self.opening = false;
    self.flushWaiting();
  }, function (e) {
    self.opening = false;
    if (e.disconnected) { return; } // again on the next welcome
    if (e.code === 3004) { self.showError({ code: 3004 }); self.alert.textContent = self.t.leave_msg; }
    else { self.showError(e); }
    if (e.code !== 3005) {
      self.waiting.forEach(function (id) {
        var m = self.find(function (x) { return x.cmid === id; });
        if (m) { m.st = 'failed'; }
      });
      self.waiting = [];
    }
    self.save();
    self.render();
  });
};

Widget.prototype.post = function (text) {
  var cmid = this.client.send(this.conv.id, text);
  this.items.push({ k: 'm', cmid: cmid, role: 'visitor', mine: true, text: text, ts: Date.now(), st: 'pending' });
};

Widget.prototype.flushWaiting = function () {
  var self = this;
  this.waiting.forEach(function (id) {
    var m = self.find(function (x) { return x.cmid === id; });
    if (m) { m.cmid = self.client.send(self.conv.id, m.text); m.wait = false; }
  });
  this.waiting = [];
  this.save();
  this.render();
};

Widget.prototype.end = function () {
  var self = this;
  if (!this.conv || this.conv.state === 'STATE_CLOSED') { this.toggle(false); return; }
  this.client.request({ close: { conversationId: this.conv.id, reason: 'visitor ended' } }).then(null, function (e) { self.showError(e); });
};

Widget.prototype.restart = function () {
  if (this.conv) { this.done.push(this.conv.id); }
  this.conv = null;
  this.items = [];
  this.readSent = this.peerRead = 0;
  this.nodes = new Map();
  this.log.textContent = '';
  this.save();
  this.render();
  this.input.focus();
};

Widget.prototype.nodeFor = function (m) {
  var t = this.t, n = this.nodes.get(m);
  if (!n) {
    if (m.k === 'n') {
      n = el('div', { class: 'note', text: m.text });
    } else {
      var label = m.mine ? t.you : t[m.role] || t.agent;
      // A bot's answer says so, in words a screen reader reads too.
      var who = m.role === 'bot' ? el('span', { class: 'who' }, [label, el('span', { class: 'tag', text: t.bot_tag })]) : el('span', { class: 'who', text: label });
      n = el('div', { class: 'msg ' + m.role + (m.mine ? ' mine' : ''), 'data-role': m.role }, [
        who,
        el('div', { class: 'bubble', text: m.text }),
        el('span', { class: 'meta' })
      ]);
    }
    this.nodes.set(m, n);
  }
  if (m.k === 'm') {
    var st = m.st;
    if (m.mine && m.seq && m.seq <= this.peerRead) { st = 'read'; }
    n.setAttribute('data-seq', m.seq || '');
    n.setAttribute('data-status', st);
    n.classList.toggle('failed', st === 'failed');
    n.lastChild.textContent = timeOf(m.ts) + (m.mine ? ' · ' + t['st_' + st] : '');
  }
  return n;
};

Widget.prototype.render = function () {
  var t = this.t, self = this;
  var conn = this.conn || 'connecting';
  this.box.setAttribute('data-conn', conn);
  this.box.setAttribute('data-open', this.isOpen ? 'true' : 'false');
  var st = this.conv ? (this.conv.state || 'STATE_UNSPECIFIED').replace('STATE_', '').toLowerCase() : 'none';
  this.box.setAttribute('data-state', st);
  this.box.setAttribute('data-position', this.conv && this.conv.pos ? String(this.conv.pos) : '');
  this.panel.hidden = !this.isOpen;
  this.launcher.setAttribute('aria-expanded', this.isOpen ? 'true' : 'false');
  this.launcher.setAttribute('aria-label', this.isOpen ? t.close_chat : t.open_chat);
  this.badge.hidden = !this.unread || this.isOpen;
  this.badge.textContent = this.unread > 9 ? '9+' : String(this.unread);
  this.launcher.title = this.unread ? fmt(t.unread, { n: this.unread }) : '';
  this.box.setAttribute('data-wait', conn === 'reconnecting' ? (this.connDetail || {}).kind || '' : conn === 'failed' ? 'failed' : '');
  this.box.setAttribute('data-secure', this.client.secureInfo && conn === 'online' ? this.client.secureInfo.suite : '');
  this.renderConn();
  var live = this.connText(true);
  if (this.live.textContent !== live) { this.live.textContent = live; }
  this.endBtn.hidden = !this.conv || this.conv.state === 'STATE_CLOSED';
  var leaving = this.leaving();
  this.box.setAttribute('data-leave', leaving ? 'true' : 'false');
  this.leave.hidden = !leaving;
  this.quick.hidden = !(!this.conv || this.conv.state === 'STATE_BOT' || this.conv.state === 'STATE_CLOSED');
  var banner = '';
  if (this.conv && this.conv.state === 'STATE_QUEUED' && this.conv.pos && !leaving) {
    banner = this.conv.pos === 1 ? t.queue_next : fmt(t.queue, { n: this.conv.pos });
    if (this.conv.eta) { banner += ' ' + (this.conv.eta < 60 ? t.eta_soon : fmt(t.eta, { m: Math.round(this.conv.eta / 60) })); }
  }
  if (this.banner.textContent !== banner) { this.banner.textContent = banner; }
  // Messages: reuse nodes, move only what is out of place.
  var items = this.items.slice().sort(cmp);
  if (!items.length) { items = [{ k: 'n', n: 0, after: 0, text: t.welcome, hello: true }]; this.greeting = this.greeting || items[0]; items[0] = this.greeting; }
  var atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
  var keep = new Set();
  items.forEach(function (m, i) {
    var n = self.nodeFor(m);
    keep.add(n);
    if (self.log.children[i] !== n) { self.log.insertBefore(n, self.log.children[i] || null); }
  });
  Array.prototype.slice.call(this.log.children).forEach(function (n) { if (!keep.has(n) && !n.classList.contains('restart')) { n.remove(); } });
  var closed = this.conv && this.conv.state === 'STATE_CLOSED';
  if (closed && !this.restartBtn) {
    this.restartBtn = el('button', { class: 'restart', type: 'button', text: t.new_chat, onclick: function () { self.restart(); } });
  }
  if (this.restartBtn) {
    if (closed) { this.log.appendChild(this.restartBtn); } else { this.restartBtn.remove(); }
  }
  if (atBottom) { this.log.scrollTop = this.log.scrollHeight; }
};

// Boot: read the script tag's attributes once the body exists.
(function () {
  if (window.UnigateWidget) { return; } // loaded twice
  var script = document.currentScript || document.querySelector('script[src*="unigate-widget"]');
  var ds = (script && script.dataset) || {};
  var server = ds.server || (script && script.src ? new URL(script.src, location.href).origin : location.origin);
  var cfg = {
    server: server.replace(/\/+$/, ''), tenant: ds.tenant || '', token: ds.token || '', skill: ds.skill || '', region: ds.region || '',
    lang: ds.lang || navigator.language || 'en', title: ds.title || '', color: ds.color || '', open: ds.open === 'true',
    crypto: ds.crypto || '', cryptoKey: ds.cryptoKey || ''
  };
  var api = window.UnigateWidget = { version: VERSION };
  function boot() {
    var w = new Widget(cfg);
    api.open = function () { w.toggle(true); };
    api.close = function () { w.toggle(false); };
    api.widget = w;
  }
  if (document.body) { boot(); } else { document.addEventListener('DOMContentLoaded', boot); }
})();
