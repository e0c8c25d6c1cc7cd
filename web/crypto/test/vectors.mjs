// Primitive cross-check, both ways. Reads Go's vectors as JSON on stdin (SM3
// digests, SM2 signatures, SM4-GCM ciphertexts, ExpandLabel outputs), checks them
// with sm-crypto and this module, and writes its own (SM2 signatures by sm-crypto,
// SM4-GCM by this module's GCM) as JSON on stdout for Go to check. Also checks the
// generic GCM code over an AES block against WebCrypto's AES-GCM. Exits 1 on any
// mismatch. Driven by crypto/interop_node_test.go.
//
// The INTL-PQ primitives (SHA-256/HMAC through ExpandLabel, AES-256-GCM,
// Ed25519, X25519) run twice: on WebCrypto, then on the @noble fallbacks
// (setWebCrypto(false)), each against Go's vectors; X25519 also the other
// way (Go computes the secret with this module's public keys).
import smCrypto from 'sm-crypto'
import { aeads, expandLabel, fromHex, hashes, kems, makeGCM, setWebCrypto, toHex, used, verifySignature, DEFAULT_SM2_UID } from '../unigate-crypto.mjs'

const { sm2, sm3 } = smCrypto
const subtle = globalThis.crypto.subtle
const chunks = []
for await (const c of process.stdin) chunks.push(c)
const go = JSON.parse(Buffer.concat(chunks).toString())
const failures = []
const check = (ok, what) => { if (!ok) failures.push(what) }

for (const v of go.sm3) check(sm3(Array.from(fromHex(v.msg))) === v.digest, `sm3 ${v.msg}`)
for (const v of go.sm2) {
  const opts = { der: true, hash: true, userId: DEFAULT_SM2_UID }
  check(sm2.doVerifySignature(Array.from(fromHex(v.msg)), v.sig, v.pub, opts), `sm2 verify ${v.msg}`)
  check(!sm2.doVerifySignature(Array.from(fromHex(v.msg + '00')), v.sig, v.pub, opts), `sm2 verify of another message ${v.msg}`)
  check(!sm2.doVerifySignature(Array.from(fromHex(v.msg)), v.sig, v.pub, { ...opts, userId: 'another-user-id!' }), `sm2 verify under another uid ${v.msg}`)
}
for (const v of go.sm4gcm) {
  const a = await aeads.SM4GCM.create(fromHex(v.key))
  const ct = await a.seal(fromHex(v.nonce), fromHex(v.pt), fromHex(v.ad))
  check(toHex(ct) === v.ct, `sm4-gcm seal ${v.pt.length / 2} bytes`)
  const pt = await a.open(fromHex(v.nonce), fromHex(v.ct), fromHex(v.ad))
  check(pt !== null && toHex(pt) === v.pt, `sm4-gcm open ${v.pt.length / 2} bytes`)
  const bad = fromHex(v.ct); bad[bad.length - 1] ^= 1
  check((await a.open(fromHex(v.nonce), bad, fromHex(v.ad))) === null, 'sm4-gcm tampered tag')
}
const x25519Out = []
const backends = []
for (const webCrypto of [true, false]) {
  setWebCrypto(webCrypto)
  const via = webCrypto ? 'webcrypto' : 'noble'
  for (const k of Object.keys(used)) delete used[k]
  for (const v of go.expandLabel) {
    const H = hashes[v.hash]
    const got = await expandLabel(H, fromHex(v.secret), v.label, fromHex(v.ctx), v.n)
    check(toHex(got) === v.out, `expandLabel ${v.hash} ${v.label} (${via})`)
  }
  for (const v of go.aesgcm ?? []) {
    const a = await aeads.AES256GCM.create(fromHex(v.key))
    const ct = await a.seal(fromHex(v.nonce), fromHex(v.pt), fromHex(v.ad))
    check(toHex(ct) === v.ct, `aes-256-gcm seal ${v.pt.length / 2} bytes (${via})`)
    const pt = await a.open(fromHex(v.nonce), fromHex(v.ct), fromHex(v.ad))
    check(pt !== null && toHex(pt) === v.pt, `aes-256-gcm open ${v.pt.length / 2} bytes (${via})`)
    const bad = fromHex(v.ct); bad[0] ^= 1
    check((await a.open(fromHex(v.nonce), bad, fromHex(v.ad))) === null, `aes-256-gcm tampered (${via})`)
  }
  for (const v of go.ed25519 ?? []) {
    const [pub, msg, sig] = [fromHex(v.pub), fromHex(v.msg), fromHex(v.sig)]
    check(await verifySignature(2, pub, msg, sig), `ed25519 verify ${v.msg} (${via})`)
    const other = sig.slice(); other[5] ^= 1
    check(!(await verifySignature(2, pub, msg, other)), `ed25519 tampered signature ${v.msg} (${via})`)
    check(!(await verifySignature(2, pub, fromHex(v.msg + '00'), sig)), `ed25519 another message ${v.msg} (${via})`)
  }
  for (const v of go.x25519 ?? []) {
    const priv = await kems.X25519.generate()
    const shared = await priv.decapsulate(fromHex(v.pub))
    x25519Out.push({ goPub: v.pub, pub: toHex(priv.publicKey), shared: toHex(shared), via })
  }
  backends.push({ ...used })
}
setWebCrypto(true)

// The GCM code over an AES block (ECB through one-block CBC with a zero IV)
// against WebCrypto's AES-GCM, for lengths around block boundaries.
for (const n of [0, 1, 15, 16, 17, 31, 32, 33, 100]) {
  const key = globalThis.crypto.getRandomValues(new Uint8Array(32))
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12))
  const pt = globalThis.crypto.getRandomValues(new Uint8Array(n))
  const ad = globalThis.crypto.getRandomValues(new Uint8Array(n % 20))
  const cbc = await subtle.importKey('raw', key, 'AES-CBC', false, ['encrypt'])
  const blocks = []
  // Precompute E(block) lazily is not possible synchronously: encrypt the counter
  // blocks GCM will ask for (H, J0..J0+k) ahead of time.
  const need = [new Uint8Array(16)]
  for (let i = 0; i <= Math.ceil(n / 16); i++) { const c = new Uint8Array(16); c.set(nonce); new DataView(c.buffer).setUint32(12, 1 + i); need.push(c) }
  for (const b of need) blocks.push(new Uint8Array(await subtle.encrypt({ name: 'AES-CBC', iv: new Uint8Array(16) }, cbc, b)).subarray(0, 16))
  const table = new Map(need.map((b, i) => [toHex(b), blocks[i]]))
  const ecb = (data) => { const out = new Uint8Array(data.length); for (let i = 0; i < data.length; i += 16) out.set(table.get(toHex(data.subarray(i, i + 16))), i); return out }
  const mine = makeGCM(ecb).seal(nonce, pt, ad)
  const ref = await (await aeads.AES256GCM.create(key)).seal(nonce, pt, ad)
  check(toHex(mine) === toHex(ref), `gcm over AES vs WebCrypto, ${n} bytes`)
}

// Our own vectors for Go: sm-crypto signatures and SM4-GCM by this module.
const kp = sm2.generateKeyPairHex()
const out = { sm2: [], sm4gcm: [], x25519: x25519Out, backends }
for (const msg of ['', '756e6967617465', toHex(new TextEncoder().encode('你好, 坐席'))]) {
  out.sm2.push({ pub: kp.publicKey, msg, sig: sm2.doSignature(Array.from(fromHex(msg)), kp.privateKey, { der: true, hash: true, userId: DEFAULT_SM2_UID, publicKey: kp.publicKey }) })
}
for (const n of [0, 5, 16, 37]) {
  const key = globalThis.crypto.getRandomValues(new Uint8Array(16))
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12))
  const pt = globalThis.crypto.getRandomValues(new Uint8Array(n))
  const ad = globalThis.crypto.getRandomValues(new Uint8Array(14))
  const ct = await (await aeads.SM4GCM.create(key)).seal(nonce, pt, ad)
  out.sm4gcm.push({ key: toHex(key), nonce: toHex(nonce), ad: toHex(ad), pt: toHex(pt), ct: toHex(ct) })
}
out.failures = failures
console.log(JSON.stringify(out))
process.exit(failures.length ? 1 : 0)
