// console.js: the agent console (web/console/index.html). Sign in with an
// agent token or a user name and password (checked by the gateway's
// authentication hook), set presence and capacity, take the conversations
// the router assigns (with the bot's intent and summary, the router's
// explanation and the visitor's context), chat with typing and read
// receipts, transfer to an agent or a skill group, answer with canned
// replies (built in, from the gateway's configuration, saved in this
// browser), close with a disposition. /console/config.json says what the
// gateway adds: canned replies, and the secure channel when it runs one.

var TEXT = {
  en: {
    title: 'Unigate agent console', signin: 'Sign in', token_label: 'Agent token', token_help: 'Paste the agent token your administrator issued (unigate token agent …).',
    or_password: 'Or sign in with your account', username: 'User name', password: 'Password', need_login: 'Enter a token, or a user name and password.',
    signout: 'Sign out', status: 'Status', capacity: 'Capacity', skills: 'Skills', apply: 'Apply',
    s_online: 'Online', s_away: 'Away', s_busy: 'Busy', s_offline: 'Offline',
    conn_connecting: 'Connecting…', conn_reconnecting: 'Reconnecting…', conn_online: 'Connected', conn_failed: 'Disconnected',
    active: 'My conversations', closed: 'Closed and transferred', none: 'No conversations yet. Set your status to Online to receive them.',
    pick: 'Select a conversation.', input_label: 'Reply', placeholder: 'Write a reply… (Enter to send, Shift+Enter for a new line)', send: 'Send',
    canned: 'Canned replies', canned_pick: 'Insert a canned reply…', canned_save: 'Save as canned reply',
    visitor: 'Visitor', agent: 'Agent', bot: 'Bot', system: 'System', you: 'You',
    typing: 'Visitor is typing…', st_pending: 'Sending…', st_sent: 'Sent', st_read: 'Read', st_failed: 'Not sent',
    context: 'Visitor context', c_visitor: 'Visitor id', c_conv: 'Conversation', c_skill: 'Skill group', c_state: 'State', c_reason: 'Last change',
    c_msgs: 'Messages', c_since: 'First message', c_pending: 'Earlier conversations of the visitor appear here once the gateway passes them on.',
    c_intent: 'Intent (bot)', c_summary: 'Summary (bot)', c_routing: 'Why you (router)', c_region: 'Region', c_language: 'Language', c_page: 'Page',
    canned_server: 'From your team', canned_builtin: 'Built in', canned_own: 'Saved in this browser', secure_on: 'Encrypted ({suite})',
    transfer: 'Transfer', to_agent: 'To agent', to_skill: 'To skill group', target: 'Agent id or skill', note: 'Note for the next agent', do_transfer: 'Transfer',
    close: 'Close conversation', disposition: 'Disposition', d_resolved: 'Resolved', d_follow: 'Needs follow-up', d_noresp: 'No response', d_spam: 'Spam or abuse', d_dup: 'Duplicate',
    close_note: 'Note (optional)', do_close: 'Close',
    state_STATE_BOT: 'Bot', state_STATE_QUEUED: 'Queued', state_STATE_ASSIGNED: 'Assigned', state_STATE_TRANSFERRED: 'Transferred', state_STATE_CLOSED: 'Closed', away_conv: 'Transferred away',
    n_assigned: 'Assigned to {a}.', n_transferred: 'Transferred{to}.', n_closed: 'Closed{r}.', n_queued: 'Back in the queue.', lang: 'Language'
  },
  zh: {
    title: 'Unigate 客服工作台', signin: '登录', token_label: '客服令牌', token_help: '粘贴管理员签发的客服令牌（unigate token agent …）。',
    or_password: '或使用账号密码登录', username: '用户名', password: '密码', need_login: '请输入令牌，或用户名和密码。',
    signout: '退出', status: '状态', capacity: '接待上限', skills: '技能组', apply: '应用',
    s_online: '在线', s_away: '离开', s_busy: '忙碌', s_offline: '离线',
    conn_connecting: '正在连接…', conn_reconnecting: '正在重连…', conn_online: '已连接', conn_failed: '已断开',
    active: '我的会话', closed: '已结束和已转出', none: '暂无会话。将状态设为"在线"即可接待。',
    pick: '请选择一个会话。', input_label: '回复', placeholder: '输入回复…（回车发送，Shift+回车换行）', send: '发送',
    canned: '快捷回复', canned_pick: '插入快捷回复…', canned_save: '存为快捷回复',
    visitor: '访客', agent: '客服', bot: '机器人', system: '系统', you: '我',
    typing: '访客正在输入…', st_pending: '发送中…', st_sent: '已发送', st_read: '已读', st_failed: '发送失败',
    context: '访客信息', c_visitor: '访客 ID', c_conv: '会话', c_skill: '技能组', c_state: '状态', c_reason: '最近变更',
    c_msgs: '消息数', c_since: '首条消息', c_pending: '访客的历史会话将在网关提供后显示在这里。',
    c_intent: '意图（机器人）', c_summary: '摘要（机器人）', c_routing: '分配原因（路由）', c_region: '地区', c_language: '语言', c_page: '来源页面',
    canned_server: '团队快捷回复', canned_builtin: '内置', canned_own: '本浏览器保存', secure_on: '已加密（{suite}）',
    transfer: '转接', to_agent: '转给客服', to_skill: '转到技能组', target: '客服 ID 或技能组', note: '给接手客服的备注', do_transfer: '转接',
    close: '结束会话', disposition: '处理结果', d_resolved: '已解决', d_follow: '需要跟进', d_noresp: '访客无回应', d_spam: '垃圾或骚扰', d_dup: '重复咨询',
    close_note: '备注（可选）', do_close: '结束',
    state_STATE_BOT: '机器人', state_STATE_QUEUED: '排队中', state_STATE_ASSIGNED: '接待中', state_STATE_TRANSFERRED: '已转接', state_STATE_CLOSED: '已结束', away_conv: '已转出',
    n_assigned: '已分配给 {a}。', n_transferred: '已转接{to}。', n_closed: '会话已结束{r}。', n_queued: '已重新排队。', lang: '语言'
  }
};

var CANNED = {
  en: ['Hello, this is {me}. How can I help you?', 'Let me check that for you, one moment please.', 'Is there anything else I can help you with?', 'Thank you for contacting us. Have a nice day!'],
  zh: ['您好，我是客服{me}，请问有什么可以帮您？', '我帮您查询一下，请稍等。', '请问还有其他可以帮您的吗？', '感谢您的咨询，祝您生活愉快！']
};

function $(id) { return document.getElementById(id); }

function Console() {
  this.storage = storageOf('sessionStorage');
  this.lang = this.storage.getItem('unigate.console.lang') || navigator.language || 'en';
  this.t = strings(this.lang, TEXT);
  this.convs = {};
  this.sel = '';
  this.nodes = new Map();
  this.presence = null;
  this.me = '';
  var st = loadJSON(this.storage, 'unigate.console') || {};
  this.convs = st.convs || {};
  this.sel = st.sel || '';
  this.presence = st.presence || null;
  this.server = {};
  this.bind();
  this.applyLang();
  var self = this;
  // The gateway's configuration first: the channel must be known before
  // the first connection. Without it the console still works (plaintext,
  // built-in replies).
  var cfg = window.fetch ? fetch('config.json', { cache: 'no-cache' }).then(function (r) { return r.ok ? r.json() : {}; }) : Promise.resolve({});
  cfg.then(null, function () { return {}; }).then(function (c) {
    self.server = c || {};
    self.fillCanned();
    var token = self.storage.getItem('unigate.console.token');
    if (token) {
      self.login(token);
    } else if (self.storage.getItem('unigate.console.auth') === 'password') {
      // A password session before this reload: it resumes with its resume
      // token (kept with the session); the password was never stored.
      self.login('');
    } else {
      self.showLogin();
    }
  });
}

Console.prototype.save = function () {
  var convs = {};
  for (var id in this.convs) {
    var c = this.convs[id];
    convs[id] = Object.assign({}, c, { msgs: c.msgs.slice(-300), typing: false });
  }
  saveJSON(this.storage, 'unigate.console', { convs: convs, sel: this.sel, presence: this.presence });
};

Console.prototype.bind = function () {
  var self = this;
  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    var tok = $('token').value.replace(/\s+/g, '');
    var user = $('username').value.replace(/^\s+|\s+$/g, ''), pass = $('password').value;
    if (tok) {
      self.login(tok);
    } else if (user && pass) {
      self.login('', { username: user, password: pass });
    } else {
      self.flash(self.t.need_login);
    }
  });
  $('signout').addEventListener('click', function () { self.logout(); });
  $('lang').addEventListener('change', function () {
    self.lang = this.value;
    self.storage.setItem('unigate.console.lang', self.lang);
    self.t = strings(self.lang, TEXT);
    self.applyLang();
    self.nodes = new Map();
    $('log').textContent = '';
    self.render();
  });
  $('presence').addEventListener('submit', function (e) {
    e.preventDefault();
    self.setPresence();
  });
  $('status').addEventListener('change', function () { self.setPresence(); });
  $('compose').addEventListener('submit', function (e) { e.preventDefault(); self.submit(); });
  $('input').addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.submit(); }
  });
  $('input').addEventListener('input', function () { self.typed(); });
  $('canned').addEventListener('change', function () {
    if (this.value) {
      var inp = $('input');
      var cur = inp.value.replace(/\s+$/, '');
      inp.value = (cur ? cur + ' ' : '') + this.value.replace(/\{me\}/g, self.me);
      this.value = '';
      inp.focus();
      self.typed();
    }
  });
  $('canned-save').addEventListener('click', function () {
    var v = $('input').value.replace(/^\s+|\s+$/g, '');
    if (!v) { return; }
    var own = loadJSON(window.localStorage, 'unigate.console.canned') || [];
    if (own.indexOf(v) < 0) { own.push(v); saveJSON(window.localStorage, 'unigate.console.canned', own.slice(-50)); }
    self.fillCanned();
  });
  $('transfer').addEventListener('submit', function (e) { e.preventDefault(); self.transfer(); });
  $('close').addEventListener('submit', function (e) { e.preventDefault(); self.close(); });
  document.addEventListener('visibilitychange', function () { self.markRead(); });
};

Console.prototype.applyLang = function () {
  var t = this.t;
  document.documentElement.lang = t.lang;
  document.title = t.title;
  Array.prototype.forEach.call(document.querySelectorAll('[data-t]'), function (n) { n.textContent = t[n.getAttribute('data-t')] || n.textContent; });
  Array.prototype.forEach.call(document.querySelectorAll('[data-tp]'), function (n) { n.setAttribute('placeholder', t[n.getAttribute('data-tp')] || ''); });
  Array.prototype.forEach.call(document.querySelectorAll('[data-ta]'), function (n) { n.setAttribute('aria-label', t[n.getAttribute('data-ta')] || ''); });
  $('lang').value = t.lang;
  this.fillCanned();
};

Console.prototype.fillCanned = function () {
  var sel = $('canned'), t = this.t;
  sel.textContent = '';
  sel.appendChild(el('option', { value: '', text: t.canned_pick }));
  // The team's replies (web.canned_replies), the built-in ones, this
  // browser's own, each group labelled.
  [[t.canned_server, (this.server && this.server.cannedReplies) || [], 'server'],
    [t.canned_builtin, CANNED[t.lang === 'zh-CN' ? 'zh' : 'en'], 'builtin'],
    [t.canned_own, loadJSON(window.localStorage, 'unigate.console.canned') || [], 'own']].forEach(function (g) {
    if (!g[1].length) { return; }
    var group = el('optgroup', { label: g[0], 'data-source': g[2] });
    g[1].forEach(function (c) { group.appendChild(el('option', { value: c, text: c.length > 60 ? c.slice(0, 57) + '…' : c })); });
    sel.appendChild(group);
  });
};

Console.prototype.showLogin = function () {
  document.body.setAttribute('data-view', 'login');
  $('username').value = this.storage.getItem('unigate.console.user') || '';
  ($('username').value ? $('password') : $('token')).focus();
};

// secure returns the client's secure options from the gateway's
// configuration: the channel from the start when the gateway requires it,
// and as the fallback when it refuses a plaintext hello for our tenant.
// The console offers the gateway's preferred suite alone.
Console.prototype.secure = function () {
  var sc = this.server.crypto;
  if (!sc || !sc.modules || !sc.suites || !sc.suites.length) { return { on: null, fallback: null }; }
  var o = secureFor(sc.modules, [sc.suites[0]], sc.keys);
  return { on: sc.required ? o : null, fallback: o };
};

// login signs in with a token, or with credentials for the gateway's
// authentication hook, or (neither) resumes the password session of this
// tab. A token is kept for the tab (sessionStorage); a password never is:
// it stays in this page's memory for its reconnects, and after a reload
// the session resumes with its resume token alone (the gateway accepts
// that for sessions its hook signed in); when the gateway no longer knows
// the session, the form asks for the password again.
Console.prototype.login = function (token, cred) {
  var self = this, sec = this.secure();
  this.token = token;
  if (token) { this.storage.setItem('unigate.console.token', token); }
  if (cred) {
    this.storage.setItem('unigate.console.user', cred.username);
    $('password').value = '';
  }
  document.body.setAttribute('data-view', 'main');
  this.client = new Client({
    url: wsURL(location.origin), token: token, credentials: cred, resumeOnly: !token && !cred, clientName: 'console/1.1.0',
    secure: sec.on, secureFallback: sec.fallback,
    storage: this.storage, storageKey: 'unigate.console.session',
    onStatus: function (s, d) { self.onStatus(s, d); },
    onWelcome: function (w) { self.onWelcome(w); },
    onEvent: function (env) { self.onEvent(env); },
    onAck: function (a) { self.onAck(a); },
    onSendFailed: function (p, e) { self.onSendFailed(p, e); }
  });
  this.client.start();
  this.render();
};

Console.prototype.logout = function () {
  if (this.client) {
    this.client.notify({ presence: { status: 'STATUS_OFFLINE' } });
    this.client.stop(true);
  }
  this.storage.removeItem('unigate.console.token');
  this.storage.removeItem('unigate.console.auth');
  this.storage.removeItem('unigate.console');
  this.convs = {};
  this.sel = '';
  this.presence = null;
  this.nodes = new Map();
  $('log').textContent = '';
  $('token').value = '';
  this.showLogin();
};

Console.prototype.onStatus = function (s, d) {
  this.conn = s;
  var info = this.client && this.client.secureInfo;
  $('conn').textContent = (this.t['conn_' + s] || s) + (s === 'online' && info ? ' · ' + fmt(this.t.secure_on, { suite: info.suite }) : '');
  document.body.setAttribute('data-conn', s);
  document.body.setAttribute('data-secure', s === 'online' && info ? info.suite : '');
  if (s === 'failed') {
    this.flash(errorText(this.t, d));
    if (d && d.code >= 2000 && d.code < 3000) { this.logout(); this.flash(errorText(this.t, d)); }
  }
};

Console.prototype.flash = function (text) {
  $('alert').textContent = text || '';
};

Console.prototype.onWelcome = function (w) {
  this.me = w.userId;
  $('me').textContent = w.userId;
  if (w.role !== 'ROLE_AGENT') {
    // Not an agent (e.g. credentials on a gateway without an
    // authentication hook made this an anonymous visitor): back to the form.
    this.client.stop(true);
    this.storage.removeItem('unigate.console.token');
    this.storage.removeItem('unigate.console.auth');
    this.showLogin();
    this.flash(errorText(this.t, { code: 2003 }));
    return;
  }
  // A password session resumes after a reload (see login).
  if (this.client.o.credentials) { this.storage.setItem('unigate.console.auth', 'password'); }
  this.flash('');
  if (this.presence) { this.client.notify({ presence: this.presence }); }
  this.render();
};

Console.prototype.setPresence = function () {
  var p = { status: $('status').value };
  var cap = parseInt($('capacity').value, 10);
  if (cap > 0) { p.capacity = cap; }
  var skills = $('skills').value.split(/[,，\s]+/).filter(Boolean);
  if (skills.length) { p.skills = skills; }
  this.presence = p;
  this.save();
  if (this.client) { this.client.notify({ presence: p }); }
  document.body.setAttribute('data-presence', p.status.replace('STATUS_', '').toLowerCase());
};

Console.prototype.conv = function (id) {
  if (!this.convs[id]) { this.convs[id] = { id: id, state: '', msgs: [], unread: 0, peerRead: 0, readSent: 0, notes: 0 }; }
  return this.convs[id];
};

Console.prototype.note = function (c, text) {
  c.msgs.push({ k: 'n', n: ++c.notes, after: this.client ? this.client.lastSeq(c.id) : 0, text: text });
};

Console.prototype.onEvent = function (env) {
  var t = this.t, c;
  if (env.conversation) {
    var e = env.conversation;
    c = this.conv(e.conversationId);
    var st = e.state || '';
    var before = c.state + '|' + c.agentId;
    if (before !== st + '|' + (e.agentId || '')) {
      if (st === 'STATE_ASSIGNED' || (st === 'STATE_TRANSFERRED' && e.agentId)) {
        this.note(c, (st === 'STATE_TRANSFERRED' ? fmt(t.n_transferred, { to: '' }) + ' ' : '') + fmt(t.n_assigned, { a: e.agentId === this.me ? t.you : e.agentId }));
      } else if (st === 'STATE_TRANSFERRED') {
        this.note(c, fmt(t.n_transferred, { to: e.skill ? ' → ' + e.skill : '' }));
      } else if (st === 'STATE_QUEUED' && c.state) {
        this.note(c, t.n_queued);
      } else if (st === 'STATE_CLOSED') {
        this.note(c, fmt(t.n_closed, { r: e.reason ? ' (' + e.reason + ')' : '' }));
      }
    }
    c.state = st;
    c.visitorId = e.visitorId || c.visitorId || '';
    c.agentId = e.agentId || '';
    c.skill = e.skill || '';
    c.reason = e.reason || '';
    // What the bot, the router and the visitor's open said; kept when a
    // later event leaves a field out.
    ['intent', 'summary', 'routing', 'region', 'language', 'page'].forEach(function (k) { if (e[k]) { c[k] = e[k]; } });
    c.lastSeq = Math.max(num(e.lastSeq), c.lastSeq || 0);
    if (!this.sel && this.mine(c)) { this.sel = c.id; }
    if (st === 'STATE_CLOSED' || !this.mine(c)) { c.typing = false; }
  } else if (env.deliver) {
    var d = env.deliver;
    c = this.conv(d.conversationId);
    var seq = num(d.seq);
    if (!c.msgs.some(function (m) { return m.seq === seq; })) {
      var me = d.senderId === this.me && d.senderRole === 'ROLE_AGENT';
      var own = me && d.clientMsgId ? c.msgs.filter(function (m) { return m.cmid === d.clientMsgId; })[0] : null;
      if (own) {
        own.seq = seq; own.st = 'sent';
      } else {
        var role = { ROLE_VISITOR: 'visitor', ROLE_AGENT: 'agent', ROLE_BOT: 'bot', ROLE_SYSTEM: 'system' }[d.senderRole] || 'system';
        c.msgs.push({ k: 'm', seq: seq, cmid: d.clientMsgId || '', role: role, mine: me, who: d.senderId || '', text: d.text || '', ts: num(d.timestampMilli), st: 'sent' });
        if (role === 'visitor') { c.typing = false; }
        if (c.id !== this.sel || document.visibilityState === 'hidden') { c.unread++; }
      }
      c.lastSeq = Math.max(c.lastSeq || 0, seq);
    }
  } else if (env.typing) {
    c = this.conv(env.typing.conversationId);
    if (env.typing.senderRole === 'ROLE_VISITOR') {
      c.typing = !!env.typing.on;
      var self = this, id = c.id;
      clearTimeout(this.typingTimer);
      if (c.typing) { this.typingTimer = setTimeout(function () { self.conv(id).typing = false; self.render(); }, 6000); }
    }
  } else if (env.read) {
    c = this.conv(env.read.conversationId);
    if (env.read.senderRole === 'ROLE_VISITOR') { c.peerRead = Math.max(c.peerRead, num(env.read.seq)); }
  } else if (env.error && !env.id) {
    this.flash(errorText(this.t, env.error));
  } else if (env.presence && !env.presence.agentId) {
    return;
  }
  this.save();
  this.render();
  this.markRead();
};

Console.prototype.mine = function (c) {
  return c.agentId === this.me && c.state !== 'STATE_CLOSED';
};

Console.prototype.onAck = function (a) {
  var c = this.conv(a.conversationId);
  c.msgs.forEach(function (m) { if (m.cmid === a.clientMsgId) { m.seq = num(a.seq); m.st = 'sent'; m.ts = num(a.timestampMilli); } });
  c.lastSeq = Math.max(c.lastSeq || 0, num(a.seq));
  this.save();
  this.render();
};

Console.prototype.onSendFailed = function (p, e) {
  var c = this.conv(p.conversationId);
  c.msgs.forEach(function (m) { if (m.cmid === p.clientMsgId) { m.st = 'failed'; } });
  this.flash(errorText(this.t, e));
  this.save();
  this.render();
};

Console.prototype.select = function (id) {
  this.stopTyping();
  this.sel = id;
  this.conv(id).unread = 0;
  this.nodes = new Map();
  $('log').textContent = '';
  this.save();
  this.render();
  this.markRead();
  $('input').focus();
};

Console.prototype.markRead = function () {
  var c = this.convs[this.sel];
  if (!c || !this.client || !this.client.ready || document.visibilityState === 'hidden' || !this.mine(c)) { return; }
  var last = 0, theirs = false;
  c.msgs.forEach(function (m) { if (m.k === 'm' && m.seq) { last = Math.max(last, m.seq); if (!m.mine && m.seq > c.readSent) { theirs = true; } } });
  if (theirs && last > c.readSent && last <= this.client.lastSeq(c.id)) {
    c.readSent = last;
    this.client.notify({ read: { conversationId: c.id, seq: String(last) } });
    this.save();
  }
};

Console.prototype.typed = function () {
  var c = this.convs[this.sel], self = this;
  if (!c || !this.mine(c) || !this.client.ready) { return; }
  if (!/\S/.test($('input').value)) { this.stopTyping(); return; }
  var now = Date.now();
  if (!this.typingOn || now - this.typingSent > 3000) {
    this.typingOn = c.id;
    this.typingSent = now;
    this.client.notify({ typing: { conversationId: c.id, on: true } });
  }
  clearTimeout(this.typingStop);
  this.typingStop = setTimeout(function () { self.stopTyping(); }, 2500);
};

Console.prototype.stopTyping = function () {
  clearTimeout(this.typingStop);
  if (this.typingOn && this.client) {
    this.client.notify({ typing: { conversationId: this.typingOn, on: false } });
    this.typingOn = false;
  }
};

Console.prototype.submit = function () {
  var c = this.convs[this.sel];
  var text = $('input').value.replace(/^\s+|\s+$/g, '');
  if (!c || !text || !this.mine(c)) { return; }
  $('input').value = '';
  this.stopTyping();
  var cmid = this.client.send(c.id, text);
  c.msgs.push({ k: 'm', cmid: cmid, role: 'agent', mine: true, who: this.me, text: text, ts: Date.now(), st: 'pending' });
  this.save();
  this.render();
};

Console.prototype.transfer = function () {
  var c = this.convs[this.sel], self = this;
  var target = $('target').value.replace(/^\s+|\s+$/g, '');
  if (!c || !target) { return; }
  var body = { conversationId: c.id, note: $('tnote').value };
  if ($('to-skill').checked) { body.toSkill = target; } else { body.toAgentId = target; }
  this.client.request({ transfer: body }).then(function () {
    $('target').value = ''; $('tnote').value = '';
    self.flash('');
  }, function (e) { self.flash(errorText(self.t, e)); });
};

Console.prototype.close = function () {
  var c = this.convs[this.sel], self = this;
  if (!c) { return; }
  var note = $('cnote').value.replace(/^\s+|\s+$/g, '');
  var reason = $('disposition').value + (note ? ': ' + note : '');
  this.client.request({ close: { conversationId: c.id, reason: reason } }).then(function () {
    $('cnote').value = '';
    self.flash('');
  }, function (e) { self.flash(errorText(self.t, e)); });
};

function lastText(c) {
  for (var i = c.msgs.length - 1; i >= 0; i--) { if (c.msgs[i].k === 'm') { return c.msgs[i].text; } }
  return '';
}

Console.prototype.renderList = function () {
  var t = this.t, self = this;
  var ids = Object.keys(this.convs).sort();
  var active = $('active'), done = $('done');
  active.textContent = '';
  done.textContent = '';
  ids.forEach(function (id) {
    var c = self.convs[id], mine = self.mine(c);
    var badge = mine ? t['state_' + c.state] || c.state : (c.state === 'STATE_CLOSED' ? t.state_STATE_CLOSED : t.away_conv);
    var btn = el('button', { type: 'button', class: 'conv' + (id === self.sel ? ' sel' : ''), 'aria-current': id === self.sel ? 'true' : null,
      onclick: function () { self.select(id); } }, [
      el('span', { class: 'row' }, [el('strong', { text: c.visitorId || id }), el('span', { class: 'badge ' + (mine ? 'on' : 'off'), text: badge })]),
      el('span', { class: 'preview', text: (c.typing ? t.typing : lastText(c)) || c.skill || '' }),
      c.unread ? el('span', { class: 'unread', text: String(c.unread), 'aria-label': c.unread + ' unread' }) : null
    ]);
    (mine ? active : done).appendChild(el('li', { 'data-conv': id, 'data-state': c.state, 'data-mine': mine ? 'true' : 'false' }, [btn]));
  });
  $('empty').hidden = ids.length > 0;
};

Console.prototype.nodeFor = function (c, m) {
  var t = this.t, n = this.nodes.get(m);
  if (!n) {
    n = m.k === 'n' ? el('div', { class: 'note', text: m.text }) : el('div', { class: 'msg ' + m.role + (m.mine ? ' mine' : '') }, [
      el('span', { class: 'who', text: m.mine ? t.you : (t[m.role] || m.role) + (m.role === 'agent' ? ' ' + m.who : '') }),
      el('div', { class: 'bubble', text: m.text }),
      el('span', { class: 'meta' })
    ]);
    this.nodes.set(m, n);
  }
  if (m.k === 'm') {
    var st = m.st;
    if (m.mine && m.seq && m.seq <= c.peerRead) { st = 'read'; }
    n.setAttribute('data-seq', m.seq || '');
    n.setAttribute('data-status', st);
    n.lastChild.textContent = timeOf(m.ts) + (m.mine ? ' · ' + t['st_' + st] : '');
  }
  return n;
};

Console.prototype.render = function () {
  var t = this.t, self = this;
  this.renderList();
  var c = this.convs[this.sel];
  document.body.setAttribute('data-selected', c ? c.id : '');
  $('chat').hidden = !c;
  $('pick').hidden = !!c;
  if (!c) { return; }
  var log = $('log');
  var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  var items = c.msgs.slice().sort(cmp), keep = new Set();
  items.forEach(function (m, i) {
    var n = self.nodeFor(c, m);
    keep.add(n);
    if (log.children[i] !== n) { log.insertBefore(n, log.children[i] || null); }
  });
  Array.prototype.slice.call(log.children).forEach(function (n) { if (!keep.has(n)) { n.remove(); } });
  if (atBottom) { log.scrollTop = log.scrollHeight; }
  $('typing').textContent = c.typing ? t.typing : '';
  var mine = this.mine(c);
  $('input').disabled = $('send').disabled = !mine;
  Array.prototype.forEach.call(document.querySelectorAll('#side form button, #side form input, #side form select'), function (n) { n.disabled = !mine; });
  $('chat-title').textContent = (c.visitorId || c.id) + ' · ' + (mine ? t['state_' + c.state] || '' : c.state === 'STATE_CLOSED' ? t.state_STATE_CLOSED : t.away_conv);
  var first = c.msgs.filter(function (m) { return m.k === 'm'; })[0];
  var ctx = $('ctx');
  ctx.textContent = '';
  [[t.c_visitor, c.visitorId], [t.c_conv, c.id], [t.c_skill, c.skill || '—'], [t.c_state, t['state_' + c.state] || c.state], [t.c_reason, c.reason || '—'],
    [t.c_intent, c.intent, 'intent'], [t.c_summary, c.summary, 'summary'], [t.c_routing, c.routing, 'routing'],
    [t.c_region, c.region, 'region'], [t.c_language, c.language, 'language'], [t.c_page, c.page, 'page'],
    [t.c_msgs, String(c.msgs.filter(function (m) { return m.k === 'm'; }).length)], [t.c_since, first ? new Date(first.ts).toLocaleString(t.lang) : '—']].forEach(function (r) {
    if (r[2] && !r[1]) { return; } // the bot and router fields only when there
    ctx.appendChild(el('dt', { text: r[0] }));
    ctx.appendChild(el('dd', { text: r[1] || '', 'data-field': r[2] || null, class: r[2] === 'summary' || r[2] === 'routing' ? 'long' : null }));
  });
};

document.addEventListener('DOMContentLoaded', function () { window.unigateConsole = new Console(); });
