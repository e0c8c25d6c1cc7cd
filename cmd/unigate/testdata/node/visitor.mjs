// A visitor written against docs/protocol.md with Node's `ws` library (not
// our code): hello, open, three messages acked in order, the agent's replies
// delivered in order, typing and read receipts, close.
//
//   node visitor.mjs ws://127.0.0.1:PORT/ws
//
// Prints one JSON line with what it saw and exits 0 on success, 1 otherwise.
import WebSocket from 'ws';

const url = process.argv[2];
const deadline = setTimeout(() => fail('timed out'), 20000);
const ws = new WebSocket(url, ['unigate.v1.json']);
const seen = { acks: [], delivers: [], typing: 0, read: 0, states: [] };
let conv = null;
let nextId = 1;
const waiters = [];
const inbox = []; // envelopes no waiter has taken yet

function fail(msg) {
  console.log(JSON.stringify({ ok: false, error: msg, seen }));
  process.exit(1);
}
function send(body) {
  const env = { id: String(nextId++), ...body };
  if (process.env.UNIGATE_DEBUG) console.error('->', JSON.stringify(env));
  ws.send(JSON.stringify(env));
  return env.id;
}
// next resolves with the first envelope not yet taken for which pred holds:
// ws may fire several message events before a waiter is registered, so
// unmatched envelopes wait in inbox.
function next(pred) {
  const i = inbox.findIndex(pred);
  if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
  return new Promise((resolve) => waiters.push({ pred, resolve }));
}

ws.on('error', (e) => fail('socket error: ' + e.message));
ws.on('close', (code, reason) => {
  if (!seen.done) fail(`closed early: ${code} ${reason}`);
});
ws.on('message', (data, isBinary) => {
  if (isBinary) fail('binary frame on the JSON subprotocol');
  const env = JSON.parse(data.toString());
  if (process.env.UNIGATE_DEBUG) console.error('<-', JSON.stringify(env));
  if (env.error) fail('server error: ' + JSON.stringify(env.error));
  if (env.ack) seen.acks.push(env.ack);
  if (env.deliver) seen.delivers.push(env.deliver);
  if (env.typing) seen.typing++;
  if (env.read) seen.read++;
  if (env.conversation) seen.states.push(env.conversation.state);
  const w = waiters.findIndex((x) => x.pred(env));
  if (w >= 0) waiters.splice(w, 1)[0].resolve(env);
  else inbox.push(env);
});

ws.on('open', async () => {
  if (ws.protocol !== 'unigate.v1.json') fail('negotiated ' + ws.protocol);
  const hid = send({ hello: { clientName: 'node-ws-test/1' } });
  const welcome = await next((e) => e.id === hid && e.welcome);
  if (welcome.welcome.role !== 'ROLE_VISITOR') fail('role ' + welcome.welcome.role);

  const oid = send({ open: { text: 'hello from node' } });
  const opened = await next((e) => e.id === oid && e.conversation);
  conv = opened.conversation.conversationId;
  if (!conv) fail('no conversation id');
  await next((e) => e.conversation && e.conversation.state === 'STATE_ASSIGNED');

  const texts = ['第一条消息', 'second message', 'third 🚀'];
  for (let i = 0; i < texts.length; i++) {
    const id = send({ send: { conversationId: conv, clientMsgId: 'node-' + i, text: texts[i] } });
    const ack = await next((e) => e.id === id && e.ack);
    if (ack.ack.clientMsgId !== 'node-' + i) fail('ack for ' + ack.ack.clientMsgId);
  }
  // The agent (Go side) echoes every message back prefixed with "echo: ".
  while (seen.delivers.filter((d) => d.senderRole === 'ROLE_AGENT').length < texts.length) {
    await next((e) => e.deliver);
  }
  send({ typing: { conversationId: conv, on: true } });
  const agentMsgs = seen.delivers.filter((d) => d.senderRole === 'ROLE_AGENT');
  const last = agentMsgs[agentMsgs.length - 1];
  send({ read: { conversationId: conv, seq: last.seq } });
  // Ask the agent side to confirm typing + read arrived: it sends "got receipts".
  await next((e) => e.deliver && e.deliver.text === 'got receipts');

  const seqs = seen.acks.map((a) => Number(a.seq));
  for (let i = 1; i < seqs.length; i++) if (seqs[i] <= seqs[i - 1]) fail('acks out of order');
  agentMsgs.forEach((d, i) => {
    if (d.text !== 'echo: ' + texts[i]) fail(`reply ${i} is ${d.text}`);
  });

  send({ close: { conversationId: conv, reason: 'resolved' } });
  await next((e) => e.conversation && e.conversation.state === 'STATE_CLOSED');
  seen.done = true;
  clearTimeout(deadline);
  console.log(JSON.stringify({ ok: true, conversation: conv, acks: seqs, states: seen.states }));
  ws.close(1000, 'bye');
});
