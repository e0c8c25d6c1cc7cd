// Interop driver: runs the JavaScript client against a Go server over TCP with
// 4-byte big-endian length-prefixed messages (crypto.StreamTransport). Driven by
// crypto/interop_node_test.go; prints one JSON line per connection and exits 0, or
// prints {"error": code, "message": ...} and exits 1.
//
//   node test/interop.mjs '{"port":1234,"suites":["GM"],"serverKeys":[{"alg":"SM2","publicKey":"04..."}],
//                           "messages":["hi"],"resume":true}'
//
// Optional: "module" runs another build of the client (a path relative to
// web/crypto, e.g. the bundled dist/unigate-crypto.js the browsers load);
// "webCrypto": false runs it on the @noble fallbacks instead of WebCrypto.
// Each line then also says which implementations ran ("used").
import net from 'node:net'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

const cfg = JSON.parse(process.argv[2])
const mod = await import(cfg.module ? pathToFileURL(resolve(cfg.module)).href : '../unigate-crypto.mjs')
const { ClientHandshake, ChannelError, Code, fromHex, isNewSessionTicket } = mod
if (cfg.webCrypto === false) {
  if (!mod.setWebCrypto) throw new Error(`${cfg.module} has no setWebCrypto`)
  mod.setWebCrypto(false)
}
const enc = new TextEncoder()
const dec = new TextDecoder()

// framed connects and returns { send(bytes), recv() -> Promise<Uint8Array>, close() }.
function framed (port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1')
    let buf = Buffer.alloc(0)
    const waiting = []
    const ready = []
    let ended = null
    const pump = () => {
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const n = buf.readUInt32BE(0)
        ready.push(new Uint8Array(buf.subarray(4, 4 + n)))
        buf = buf.subarray(4 + n)
      }
      while (waiting.length && (ready.length || ended)) {
        const w = waiting.shift()
        if (ready.length) w.resolve(ready.shift())
        else w.reject(ended)
      }
    }
    sock.on('data', (d) => { buf = Buffer.concat([buf, d]); pump() })
    sock.on('error', (e) => { ended = e; pump(); reject(e) })
    sock.on('close', () => { ended = ended ?? new Error('connection closed'); pump() })
    sock.on('connect', () => resolve({
      send (m) { const h = Buffer.alloc(4); h.writeUInt32BE(m.length); sock.write(Buffer.concat([h, m])) },
      recv () { return new Promise((resolve, reject) => { waiting.push({ resolve, reject }); pump() }) },
      close () { sock.end() },
    }))
  })
}

async function session (prev) {
  const t = await framed(cfg.port)
  const hs = await ClientHandshake.create({
    suites: cfg.suites,
    serverKeys: cfg.serverKeys.map((k) => ({ alg: k.alg, publicKey: fromHex(k.publicKey) })),
    session: prev,
  })
  t.send(hs.hello)
  const { finished, conn } = await hs.handleServerHello(await t.recv())
  t.send(finished)
  let next = null
  let n = 0
  for (const m of cfg.messages) {
    t.send(await conn.seal(enc.encode(m)))
    let rec = await t.recv()
    if (isNewSessionTicket(rec)) {
      next = await hs.handleNewSessionTicket(rec)
      rec = await t.recv()
    }
    const got = dec.decode(await conn.open(rec))
    if (got !== 'echo: ' + m) throw new Error(`echo mismatch: ${JSON.stringify(got)}`)
    n++
  }
  t.send(await conn.sealClose())
  let closed = false
  try { await conn.open(await t.recv()) } catch (e) { closed = e instanceof ChannelError && e.code === Code.Closed; if (!closed) throw e }
  t.close()
  console.log(JSON.stringify({ suite: conn.suite.name, resumed: conn.resumed, echoed: n, closed, ticket: next !== null, used: { ...mod.used } }))
  return next
}

try {
  const s = await session(null)
  if (cfg.resume) {
    if (!s) throw new Error('no ticket to resume with')
    await session(s)
  }
} catch (e) {
  console.log(JSON.stringify({ error: e.code ?? 0, message: String(e.message ?? e) }))
  process.exit(1)
}
