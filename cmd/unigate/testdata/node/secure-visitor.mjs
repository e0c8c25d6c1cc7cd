// A visitor that runs the secure channel (GM suite) with the independent
// JavaScript client web/crypto/unigate-crypto.mjs over Node's `ws` library,
// following docs/protocol.md ("Encrypted connections"): secure{ClientHello},
// secure{ServerHello}, secure{Finished}, then every envelope sealed.
//
//   node secure-visitor.mjs ws://127.0.0.1:PORT/ws SM2_PUBLIC_KEY_HEX
//
// Sends hello, opens a conversation with a message, waits for the agent's
// "echo: ..." reply, and checks that no server frame carried it in clear.
// Prints one JSON line and exits 0 on success, 1 otherwise.
import WebSocket from 'ws'
import { ClientHandshake, fromHex, isNewSessionTicket } from '../../../../web/crypto/unigate-crypto.mjs'

const [url, keyHex] = process.argv.slice(2)
const deadline = setTimeout(() => fail('timed out'), 20000)
const seen = { frames: 0, ticket: false, suite: null }
const enc = new TextEncoder()
const dec = new TextDecoder()
const TEXT = 'node secret: 我的订单 #42'

function fail (msg) {
  console.log(JSON.stringify({ ok: false, error: msg, seen }))
  process.exit(1)
}

const ws = new WebSocket(url, ['unigate.v1.json'])
const b64 = (u8) => Buffer.from(u8).toString('base64')
const secure = (u8) => JSON.stringify({ secure: { data: b64(u8) } })

// Messages are handled strictly in order: opening a record is async, and
// records carry implicit sequence numbers.
const raw = []
let wake = null
ws.on('message', (data, isBinary) => {
  if (isBinary) fail('binary frame on the JSON subprotocol')
  const s = data.toString()
  seen.frames++
  if (s.includes('echo:') || s.includes('node secret')) fail('plaintext on the wire: ' + s)
  raw.push(s)
  if (wake) { const w = wake; wake = null; w() }
})
ws.on('error', (e) => fail('socket error: ' + e.message))
ws.on('close', (code, reason) => { if (!seen.done) fail(`closed early: ${code} ${reason}`) })

async function nextRaw () {
  while (raw.length === 0) await new Promise((resolve) => { wake = resolve })
  const env = JSON.parse(raw.shift())
  if (!env.secure) fail('plaintext envelope on an encrypted connection: ' + JSON.stringify(env))
  return new Uint8Array(Buffer.from(env.secure.data ?? '', 'base64'))
}

ws.on('open', async () => {
  try {
    if (ws.protocol !== 'unigate.v1.json') fail('negotiated ' + ws.protocol)
    const hs = await ClientHandshake.create({ suites: ['GM'], serverKeys: [{ alg: 'SM2', publicKey: fromHex(keyHex) }] })
    ws.send(secure(hs.hello))
    const { finished, conn } = await hs.handleServerHello(await nextRaw())
    ws.send(secure(finished))
    seen.suite = conn.suite?.name ?? 'GM'

    let nextId = 1
    const send = async (body) => {
      const env = { id: String(nextId++), ...body }
      ws.send(secure(await conn.seal(enc.encode(JSON.stringify(env)))))
      return env.id
    }
    const next = async (pred) => {
      for (;;) {
        const msg = await nextRaw()
        if (isNewSessionTicket(msg)) {
          await hs.handleNewSessionTicket(msg)
          seen.ticket = true
          continue
        }
        const env = JSON.parse(dec.decode(await conn.open(msg)))
        if (env.error) fail('server error: ' + JSON.stringify(env.error))
        if (pred(env)) return env
      }
    }

    const hid = await send({ hello: { clientName: 'node-secure-test/1' } })
    const welcome = await next((e) => e.id === hid && e.welcome)
    if (welcome.welcome.role !== 'ROLE_VISITOR') fail('role ' + welcome.welcome.role)
    const oid = await send({ open: { text: TEXT } })
    const opened = await next((e) => e.id === oid && e.conversation)
    const conv = opened.conversation.conversationId
    const reply = await next((e) => e.deliver && e.deliver.senderRole === 'ROLE_AGENT')
    if (reply.deliver.text !== 'echo: ' + TEXT) fail('reply ' + reply.deliver.text)
    seen.done = true
    clearTimeout(deadline)
    console.log(JSON.stringify({ ok: true, conversation: conv, seen }))
    ws.close(1000, 'bye')
  } catch (e) {
    fail(String(e && e.stack || e))
  }
})
