// Primitive cross-check, both ways. Reads Go's vectors as JSON on stdin (SM3
// digests, SM2 signatures, SM4-GCM ciphertexts, ExpandLabel outputs), checks them
// with sm-crypto and this module, and writes its own (SM2 signatures by sm-crypto,
// SM4-GCM by this module's GCM) as JSON on stdout for Go to check. Also checks the
// generic GCM code over an AES block against WebCrypto's AES-GCM. Exits 1 on any
// mismatch. Driven by crypto/interop_node_test.go.
import smCrypto from 'sm-crypto'
import { aeads, expandLabel, fromHex, hashes, makeGCM, toHex, DEFAULT_SM2_UID } from '../unigate-crypto.mjs'

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
for (const v of go.expandLabel) {
  const H = hashes[v.hash]
  const got = await expandLabel(H, fromHex(v.secret), v.label, fromHex(v.ctx), v.n)
  check(toHex(got) === v.out, `expandLabel ${v.hash} ${v.label}`)
}

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
const out = { sm2: [], sm4gcm: [] }
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
