// Unigate secure channel: the client side in JavaScript (browsers and Node.js).
//
// An independent implementation of docs/crypto.md, written from the spec, not
// from the Go code; the Go server in crypto/ is the reference and
// crypto/interop_node_test.go drives this module against it.
//
// Primitives:
//   GM       SM2 ECDH, SM2 signatures with the GB/T 32918.2 Z value, SM3, SM4 from
//            npm sm-crypto; GCM (NIST SP 800-38D) over the SM4 block is implemented
//            here (sm-crypto has ECB/CBC only) and checked against Go vectors and,
//            over AES, against WebCrypto's AES-GCM.
//   GM-PQ    the GM suite with SM2 ECDH || ML-KEM-768 (@noble/post-quantum).
//   INTL-PQ  ML-KEM-768 || X25519, Ed25519, SHA-256/HMAC/HKDF and AES-256-GCM from
//            WebCrypto where the browser has them; otherwise from the audited pure
//            JavaScript @noble packages (@noble/curves X25519 and Ed25519, @noble/hashes
//            SHA-256 and HMAC, @noble/ciphers AES-GCM). WebCrypto is missing in an
//            insecure context (a page served over http:// from another host than
//            localhost has no crypto.subtle), and X25519/Ed25519 arrived in Chromium 133
//            and 137; the fallbacks are checked against WebCrypto (test/vectors.mjs).
//            The GM key ids (SHA-256) take the same path.
//
// The module is transport-agnostic, like the Go package: the caller carries the
// handshake messages and records (one WebSocket message each). Everything is
// async (WebCrypto). Nothing is fetched at run time.
//
//   const hs = await ClientHandshake.create({ suites: ['GM'], serverKeys: [{ alg: 'SM2', publicKey }] })
//   send(hs.hello)
//   const { finished, conn } = await hs.handleServerHello(await receive())
//   send(finished)
//   const rec = await conn.seal(new TextEncoder().encode('hi')); send(rec)
//   const pt = await conn.open(await receive())   // a NewSessionTicket goes to hs.handleNewSessionTicket
//
// In a browser the bare imports below resolve through a bundler or an import map
// to the vendored node_modules (sm-crypto and jsbn are CommonJS).

import smCrypto from 'sm-crypto'
import smUtils from 'sm-crypto/src/sm2/utils.js'
import jsbn from 'jsbn'
import { ml_kem768 } from '@noble/post-quantum/ml-kem.js'
import { x25519 as nobleX25519, ed25519 as nobleEd25519 } from '@noble/curves/ed25519.js'
import { gcm as nobleGCM } from '@noble/ciphers/aes.js'
import { sha256 as nobleSHA256 } from '@noble/hashes/sha2.js'
import { hmac as nobleHMAC } from '@noble/hashes/hmac.js'

// sm-crypto and jsbn are reached through smCrypto, smUtils and jsbn at the
// time of use, never at load: web/bundle builds an INTL-PQ-only asset in
// which they are stubs.
const utf8 = new TextEncoder()
const EMPTY = new Uint8Array(0)

// ---- errors (codes as in crypto/errors.go) ----

export const Code = Object.freeze({
  Malformed: 1, UnsupportedVersion: 2, NoCommonSuite: 3, BadKeyShare: 4,
  UnknownServerKey: 5, BadSignature: 6, BadFinished: 7, BadBinder: 8,
  UnexpectedMessage: 9, SuiteNotOffered: 10, BadTicketMessage: 11,
  RecordAuth: 30, RecordTooShort: 31, RecordType: 32, Closed: 33, ConnFailed: 34,
  Config: 90, Internal: 91,
})
const codeNames = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k]))

export class ChannelError extends Error {
  constructor (code, op) {
    super(`unigate/crypto: ${op}: ${codeNames[code] ?? code}`)
    this.code = code
    this.op = op
  }
}
const fail = (code, op) => { throw new ChannelError(code, op) }

// ---- bytes ----

export function concat (...parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}
export const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
export const fromHex = (h) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16))
const u16 = (n) => Uint8Array.of(n >>> 8, n & 0xff)
const u32 = (n) => Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff)
const u64 = (n) => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b }
const vec8 = (b) => concat([b.length], b)
const vec16 = (b) => concat(u16(b.length), b)
function equalCT (a, b) {
  if (a.length !== b.length) return false
  let d = 0
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i]
  return d === 0
}
function wipe (b) { if (b) b.fill(0) }
function random (n) { return globalThis.crypto.getRandomValues(new Uint8Array(n)) }

// Reader: bounds-checked; every method returns null past the end.
class Reader {
  constructor (b) { this.b = b; this.off = 0 }
  u8 () { return this.off < this.b.length ? this.b[this.off++] : null }
  u16 () { if (this.b.length - this.off < 2) return null; const v = (this.b[this.off] << 8) | this.b[this.off + 1]; this.off += 2; return v }
  u32 () { if (this.b.length - this.off < 4) return null; const v = new DataView(this.b.buffer, this.b.byteOffset + this.off, 4).getUint32(0); this.off += 4; return v }
  fixed (n) { if (n === null || this.b.length - this.off < n) return null; const v = this.b.subarray(this.off, this.off + n); this.off += n; return v }
  vec8 () { return this.fixed(this.u8()) }
  vec16 () { return this.fixed(this.u16()) }
  empty () { return this.off === this.b.length }
}

// ---- WebCrypto, or the @noble fallbacks ----

// subtle is WebCrypto's SubtleCrypto, or null: absent in insecure contexts,
// or turned off with setWebCrypto(false) (tests of the fallbacks).
let subtle = globalThis.crypto?.subtle ?? null
const probes = new Map() // algorithm name -> Promise<boolean>

// setWebCrypto(false) makes every primitive use its @noble fallback;
// setWebCrypto(true) goes back to WebCrypto where the runtime has it.
export function setWebCrypto (on) {
  subtle = on ? (globalThis.crypto?.subtle ?? null) : null
  probes.clear()
}

// used records which implementation each primitive last ran on
// ('webcrypto' or 'noble'), for tests and diagnostics.
export const used = {}

// pick returns the SubtleCrypto to run alg with, or null for the @noble
// fallback, and records the choice under name in used. X25519 and Ed25519
// are probed once (older browsers throw NotSupportedError).
async function pick (name, alg) {
  const s = subtle
  let ok = !!s
  if (ok && (alg === 'X25519' || alg === 'Ed25519')) {
    if (!probes.has(alg)) {
      probes.set(alg, s.generateKey({ name: alg }, false, alg === 'X25519' ? ['deriveBits'] : ['sign', 'verify']).then(() => true, () => false))
    }
    ok = await probes.get(alg)
  }
  used[name] = ok ? 'webcrypto' : 'noble'
  return ok ? s : null
}

// ---- hashes, HMAC, HKDF (RFC 5869) ----

const SM3 = {
  name: 'SM3',
  size: 32,
  async digest (data) { return fromHex(smCrypto.sm3(Array.from(data))) },
  async hmac (key, data) { return fromHex(smCrypto.sm3(Array.from(data), { key: Array.from(key) })) },
}
const SHA256 = {
  name: 'SHA-256',
  size: 32,
  async digest (data) {
    const s = await pick('sha256', 'SHA-256')
    if (!s) return nobleSHA256(data)
    return new Uint8Array(await s.digest('SHA-256', data))
  },
  async hmac (key, data) {
    const s = await pick('sha256', 'SHA-256')
    if (!s) return nobleHMAC(nobleSHA256, key, data)
    const k = await s.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
    return new Uint8Array(await s.sign('HMAC', k, data))
  },
}
export const hashes = { SM3, SHA256 }

async function hkdfExpand (H, prk, info, n) {
  const out = new Uint8Array(n)
  let t = EMPTY
  for (let i = 1, o = 0; o < n; i++) {
    t = await H.hmac(prk, concat(t, info, [i]))
    out.set(t.subarray(0, Math.min(t.length, n - o)), o)
    o += t.length
  }
  return out
}
const extract = (H, salt, ikm) => H.hmac(salt, ikm)

// expandLabel(secret, label, ctx, n) = HKDF-Expand(secret, u16 n || vec8("ug1 " || label) || vec8(ctx), n)
export async function expandLabel (H, secret, label, ctx, n) {
  const full = utf8.encode('ug1 ' + label)
  return hkdfExpand(H, secret, concat(u16(n), vec8(full), vec8(ctx)), n)
}
async function earlySecret (H, psk) {
  const zero = new Uint8Array(H.size)
  return extract(H, zero, psk ?? zero)
}
async function derived (H, secret) { return expandLabel(H, secret, 'derived', await H.digest(EMPTY), H.size) }

// ---- GCM (NIST SP 800-38D, 96-bit IVs) over any 128-bit block cipher ----

const R = 0xe1n << 120n
function gmul (x, y) {
  let z = 0n
  let v = y
  for (let i = 127n; i >= 0n; i--) {
    if ((x >> i) & 1n) z ^= v
    v = (v & 1n) ? (v >> 1n) ^ R : v >> 1n
  }
  return z
}
const toBig = (b) => { let x = 0n; for (const v of b) x = (x << 8n) | BigInt(v); return x }
const fromBig = (x) => { const b = new Uint8Array(16); for (let i = 15; i >= 0; i--) { b[i] = Number(x & 0xffn); x >>= 8n } return b }

// makeGCM returns { seal, open } for encryptBlocks, a function that encrypts a
// multiple of 16 bytes in ECB fashion (one call per record keeps it fast enough).
export function makeGCM (encryptBlocks) {
  const H = toBig(encryptBlocks(new Uint8Array(16)))
  function ghash (ad, ct) {
    let y = 0n
    for (const data of [ad, ct]) {
      for (let i = 0; i < data.length; i += 16) {
        const blk = new Uint8Array(16)
        blk.set(data.subarray(i, i + 16))
        y = gmul(y ^ toBig(blk), H)
      }
    }
    y = gmul(y ^ toBig(concat(u64(ad.length * 8), u64(ct.length * 8))), H)
    return fromBig(y)
  }
  // keystream: block 0 is E(J0) (tag mask), blocks 1.. are E(inc32^i(J0)).
  function keystream (nonce, n) {
    const blocks = Math.ceil(n / 16) + 1
    const ctr = new Uint8Array(16 * blocks)
    const dv = new DataView(ctr.buffer)
    for (let i = 0; i < blocks; i++) {
      ctr.set(nonce, 16 * i)
      dv.setUint32(16 * i + 12, (1 + i) >>> 0)
    }
    return encryptBlocks(ctr)
  }
  return {
    seal (nonce, pt, ad) {
      if (nonce.length !== 12) throw new Error('gcm: 12-byte nonces only')
      const ks = keystream(nonce, pt.length)
      const ct = new Uint8Array(pt.length + 16)
      for (let i = 0; i < pt.length; i++) ct[i] = pt[i] ^ ks[16 + i]
      const tag = ghash(ad, ct.subarray(0, pt.length))
      for (let i = 0; i < 16; i++) ct[pt.length + i] = tag[i] ^ ks[i]
      return ct
    },
    open (nonce, ctTag, ad) {
      if (nonce.length !== 12 || ctTag.length < 16) return null
      const ct = ctTag.subarray(0, ctTag.length - 16)
      const ks = keystream(nonce, ct.length)
      const tag = ghash(ad, ct)
      for (let i = 0; i < 16; i++) tag[i] ^= ks[i]
      if (!equalCT(tag, ctTag.subarray(ct.length))) return null
      const pt = new Uint8Array(ct.length)
      for (let i = 0; i < ct.length; i++) pt[i] = ct[i] ^ ks[16 + i]
      return pt
    },
  }
}

// SM4 (GB/T 32907) in ECB over whole blocks, from sm-crypto.
export function sm4Blocks (key) {
  const k = Array.from(key)
  return (blocks) => Uint8Array.from(smCrypto.sm4.encrypt(Array.from(blocks), k, { padding: 'none', output: 'array' }))
}

const SM4GCM = {
  name: 'SM4-GCM',
  keySize: 16,
  async create (key) {
    const g = makeGCM(sm4Blocks(key))
    return { seal: async (n, pt, ad) => g.seal(n, pt, ad), open: async (n, ct, ad) => g.open(n, ct, ad) }
  },
}
const AES256GCM = {
  name: 'AES-256-GCM',
  keySize: 32,
  async create (key) {
    const s = await pick('aesgcm', 'AES-GCM')
    if (!s) {
      // A copy of the key for the connection's life (the caller wipes its
      // own), as WebCrypto keeps one inside its CryptoKey.
      const k = key.slice()
      return {
        async seal (iv, pt, ad) { return nobleGCM(k, iv, ad).encrypt(pt) },
        async open (iv, ct, ad) { try { return nobleGCM(k, iv, ad).decrypt(ct) } catch { return null } },
      }
    }
    const k = await s.importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt'])
    return {
      async seal (iv, pt, ad) { return new Uint8Array(await s.encrypt({ name: 'AES-GCM', iv, additionalData: ad, tagLength: 128 }, k, pt)) },
      async open (iv, ct, ad) {
        try { return new Uint8Array(await s.decrypt({ name: 'AES-GCM', iv, additionalData: ad, tagLength: 128 }, k, ct)) } catch { return null }
      },
    }
  },
}
export const aeads = { SM4GCM, AES256GCM }

// ---- KEMs (client side: generate a share, decapsulate the server's ciphertext) ----

let sm2Curve = null
const SM2ECDH = {
  publicKeySize: 65,
  ciphertextSize: 65,
  async generate () {
    // The private key comes from crypto.getRandomValues (320 bits reduced
    // mod n-1, bias below 2^-64), not from sm-crypto's default generator,
    // an ARC4 stream seeded once per page.
    const kp = smCrypto.sm2.generateKeyPairHex(toHex(random(40)), 16)
    return {
      publicKey: fromHex(kp.publicKey),
      async decapsulate (ct) {
        const hex = toHex(ct)
        if (ct.length !== 65 || ct[0] !== 4 || !smCrypto.sm2.verifyPublicKey(hex)) throw new Error('bad SM2 point')
        sm2Curve ??= smUtils.getGlobalCurve()
        const p = sm2Curve.decodePointHex(hex).multiply(new jsbn.BigInteger(kp.privateKey, 16))
        if (p.isInfinity()) throw new Error('SM2 ECDH at infinity')
        return fromHex(p.getX().toBigInteger().toString(16).padStart(64, '0'))
      },
    }
  },
}
const MLKEM768 = {
  publicKeySize: 1184,
  ciphertextSize: 1088,
  async generate () {
    const { publicKey, secretKey } = ml_kem768.keygen()
    return {
      publicKey,
      async decapsulate (ct) {
        if (ct.length !== 1088) throw new Error('bad ML-KEM ciphertext length')
        return ml_kem768.decapsulate(ct, secretKey)
      },
    }
  },
}
const X25519 = {
  publicKeySize: 32,
  ciphertextSize: 32,
  async generate () {
    const s = await pick('x25519', 'X25519')
    if (!s) {
      const { secretKey, publicKey } = nobleX25519.keygen()
      return {
        publicKey,
        async decapsulate (ct) {
          if (ct.length !== 32) throw new Error('bad X25519 share length')
          try { return nobleX25519.getSharedSecret(secretKey, ct) } finally { wipe(secretKey) }
        },
      }
    }
    const kp = await s.generateKey({ name: 'X25519' }, false, ['deriveBits'])
    return {
      publicKey: new Uint8Array(await s.exportKey('raw', kp.publicKey)),
      async decapsulate (ct) {
        const peer = await s.importKey('raw', ct, { name: 'X25519' }, false, [])
        return new Uint8Array(await s.deriveBits({ name: 'X25519', public: peer }, kp.privateKey, 256))
      },
    }
  },
}
// kems are the key agreements on their own (test/vectors.mjs checks them
// against Go).
export const kems = { SM2ECDH, MLKEM768, X25519 }

// hybrid: shares, ciphertexts and secrets are first || second.
function hybrid (a, b) {
  return {
    publicKeySize: a.publicKeySize + b.publicKeySize,
    ciphertextSize: a.ciphertextSize + b.ciphertextSize,
    async generate () {
      const ka = await a.generate()
      const kb = await b.generate()
      return {
        publicKey: concat(ka.publicKey, kb.publicKey),
        async decapsulate (ct) {
          const s1 = await ka.decapsulate(ct.subarray(0, a.ciphertextSize))
          const s2 = await kb.decapsulate(ct.subarray(a.ciphertextSize))
          return concat(s1, s2)
        },
      }
    },
  }
}

// ---- signatures and key ids ----

const SigSM2 = 1
const SigEd25519 = 2
const sigByName = { SM2: SigSM2, Ed25519: SigEd25519 }
export const DEFAULT_SM2_UID = '1234567812345678'

// verifySignature checks a server signature: alg is 1 (SM2, with the Z
// value of DEFAULT_SM2_UID) or 2 (Ed25519); pub the raw public key.
export async function verifySignature (alg, pub, msg, sig) {
  if (alg === SigSM2) {
    return smCrypto.sm2.doVerifySignature(Array.from(msg), toHex(sig), toHex(pub), { der: true, hash: true, userId: DEFAULT_SM2_UID })
  }
  if (sig.length !== 64 || pub.length !== 32) return false
  const s = await pick('ed25519', 'Ed25519')
  if (!s) {
    // RFC 8032 / FIPS 186-5 rules (zip215: false), as Go's crypto/ed25519.
    try { return nobleEd25519.verify(sig, msg, pub, { zip215: false }) } catch { return false }
  }
  const k = await s.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify'])
  return s.verify({ name: 'Ed25519' }, k, sig, msg)
}

// keyId = first 8 bytes of SHA-256(u8 algorithm || public key).
export async function keyId (alg, publicKey) {
  return (await SHA256.digest(concat([sigByName[alg] ?? alg], publicKey))).subarray(0, 8)
}

// ---- suites ----

export const suites = Object.freeze({
  GM: { id: 1, name: 'GM', kem: SM2ECDH, hash: SM3, aead: SM4GCM, sig: SigSM2 },
  'GM-PQ': { id: 2, name: 'GM-PQ', kem: hybrid(SM2ECDH, MLKEM768), hash: SM3, aead: SM4GCM, sig: SigSM2 },
  'INTL-PQ': { id: 3, name: 'INTL-PQ', kem: hybrid(MLKEM768, X25519), hash: SHA256, aead: AES256GCM, sig: SigEd25519 },
})
const suiteById = (id) => Object.values(suites).find((s) => s.id === id)

// ---- records ----

const REC_DATA = 0x17
const REC_CLOSE = 0x15
const DIR_C2S = 1
const DIR_S2C = 2
export const RECORD_OVERHEAD = 17

class Half {
  constructor (suite, dir, rekeyAfter) {
    this.suite = suite
    this.dir = dir
    this.rekeyAfter = rekeyAfter
    this.epoch = 0
    this.seq = 0
    this.err = null
    this.queue = Promise.resolve() // serialises seal (or open) calls
  }

  async setSecret (secret) {
    const s = this.suite
    wipe(this.secret)
    this.secret = secret
    const key = await expandLabel(s.hash, secret, 'key', EMPTY, s.aead.keySize)
    this.iv = await expandLabel(s.hash, secret, 'iv', EMPTY, 12)
    this.aead = await s.aead.create(key)
    wipe(key)
    this.seq = 0
  }

  async maybeRekey () {
    if (this.seq < this.rekeyAfter) return
    if (this.epoch === 0xffffffff) fail(Code.Internal, 'rekey')
    await this.setSecret(await expandLabel(this.suite.hash, this.secret, 'traffic upd', EMPTY, this.suite.hash.size))
    this.epoch++
  }

  // nonce = iv XOR (0^4 || u64 seq); ad = u8 type || u8 dir || u32 epoch || u64 seq
  nonceAd (type) {
    const nonce = this.iv.slice()
    const s = u64(this.seq)
    for (let i = 0; i < 8; i++) nonce[4 + i] ^= s[i]
    return [nonce, concat([type, this.dir], u32(this.epoch), s)]
  }

  run (fn) {
    const p = this.queue.then(fn)
    this.queue = p.catch(() => {})
    return p
  }
}

// Conn is an established channel. seal/open calls are serialised per direction.
export class Conn {
  constructor (suite, rekeyAfter, resumed, serverKeyId) {
    this.suite = suite
    this.resumed = resumed
    this.serverKeyId = serverKeyId
    this.out = new Half(suite, DIR_C2S, rekeyAfter)
    this.in = new Half(suite, DIR_S2C, rekeyAfter)
  }

  seal (plaintext) { return this.out.run(() => this.#seal(REC_DATA, plaintext)) }
  sealClose () {
    return this.out.run(async () => {
      const r = await this.#seal(REC_CLOSE, EMPTY)
      this.out.err = new ChannelError(Code.Closed, 'seal')
      return r
    })
  }

  async #seal (type, plaintext) {
    const h = this.out
    if (h.err) throw h.err
    await h.maybeRekey()
    const [nonce, ad] = h.nonceAd(type)
    const ct = await h.aead.seal(nonce, plaintext, ad)
    h.seq++
    return concat([type], ct)
  }

  open (record) { return this.in.run(() => this.#open(record)) }

  async #open (record) {
    const h = this.in
    if (h.err) throw (h.err.code === Code.Closed ? h.err : new ChannelError(Code.ConnFailed, 'open'))
    const dead = (code) => { h.err = new ChannelError(code, 'open'); throw h.err }
    if (record.length < RECORD_OVERHEAD) dead(Code.RecordTooShort)
    const type = record[0]
    if (type !== REC_DATA && type !== REC_CLOSE) dead(Code.RecordType)
    await h.maybeRekey()
    const [nonce, ad] = h.nonceAd(type)
    const pt = await h.aead.open(nonce, record.subarray(1), ad)
    if (pt === null) dead(Code.RecordAuth)
    h.seq++
    if (type === REC_CLOSE) dead(Code.Closed)
    return pt
  }
}

// ---- handshake ----

const MSG_CLIENT_HELLO = 1
const MSG_SERVER_HELLO = 2
const MSG_FINISHED = 3
const MSG_NEW_SESSION_TICKET = 4
const VERSION = 1
const MODE_FULL = 0
const MODE_RESUMED = 1
const MODE_CERT = 2
const SIG_CONTEXT = utf8.encode('unigate v1 server signature\0')

function parseServerHello (raw) {
  const op = 'server hello'
  const r = new Reader(raw)
  if (r.u8() !== MSG_SERVER_HELLO) fail(Code.UnexpectedMessage, op)
  const v = r.u8()
  if (v === null) fail(Code.Malformed, op)
  if (v !== VERSION) fail(Code.UnsupportedVersion, op)
  const sh = { random: r.fixed(32), suite: r.u8(), share: r.vec16(), mode: r.u8(), rekeyAfter: r.u32() }
  if (!sh.random || sh.suite === null || !sh.share || sh.share.length === 0 || sh.mode === null || sh.mode > MODE_CERT || !sh.rekeyAfter) fail(Code.Malformed, op)
  if (sh.mode === MODE_FULL) {
    sh.keyId = r.vec8()
    if (!sh.keyId || sh.keyId.length !== 8) fail(Code.Malformed, op)
  } else if (sh.mode === MODE_CERT) {
    const list = r.vec16()
    if (!list || list.length === 0) fail(Code.Malformed, op)
    const lr = new Reader(list)
    sh.chain = []
    while (!lr.empty()) {
      const c = lr.vec16()
      if (!c || c.length === 0 || sh.chain.length === 4) fail(Code.Malformed, op)
      sh.chain.push(c)
    }
  }
  sh.coreEnd = r.off
  if (sh.mode !== MODE_RESUMED) {
    sh.sig = r.vec16()
    if (!sh.sig || sh.sig.length === 0) fail(Code.Malformed, op)
  }
  sh.sigEnd = r.off
  sh.finished = r.vec8()
  if (!sh.finished || sh.finished.length === 0 || !r.empty()) fail(Code.Malformed, op)
  return sh
}

function contains (hay, needle) {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer
    return true
  }
  return false
}

// ClientHandshake is the client's state machine (not reentrant).
//   options.suites      suite names in preference order (default GM-PQ, GM, INTL-PQ)
//   options.serverKeys  pinned keys: [{ alg: 'SM2' | 'Ed25519', publicKey: Uint8Array }]
//   options.session     a session from handleNewSessionTicket, offered for resumption
//   options.now         clock in ms (tests)
export class ClientHandshake {
  static async create ({ suites: names = ['GM-PQ', 'GM', 'INTL-PQ'], serverKeys = [], session = null, now = Date.now } = {}) {
    const op = 'client hello'
    if (names.length === 0 || names.length > 8 || new Set(names).size !== names.length) fail(Code.Config, op)
    if (serverKeys.length === 0) fail(Code.Config, op)
    const hs = new ClientHandshake()
    hs.now = now
    hs.suites = names.map((n) => suites[n] ?? fail(Code.Config, op))
    hs.pinned = []
    for (const k of serverKeys) {
      const alg = sigByName[k.alg] ?? fail(Code.Config, op)
      hs.pinned.push({ alg, publicKey: k.publicKey, id: await keyId(alg, k.publicKey) })
    }
    hs.privs = []
    const shares = []
    for (const s of hs.suites) {
      const priv = await s.kem.generate()
      hs.privs.push(priv)
      shares.push(concat([s.id], vec16(priv.publicKey)))
    }
    let b = concat([MSG_CLIENT_HELLO, VERSION], random(32), vec8(Uint8Array.from(hs.suites, (s) => s.id)), [hs.suites.length], ...shares)
    const bsuite = session && now() < session.expiry ? hs.suites.find((s) => s.id === session.suite) : null
    if (bsuite) {
      hs.session = session
      b = concat(b, [1], vec16(session.ticket))
      const H = bsuite.hash
      const bkey = await expandLabel(H, await earlySecret(H, session.psk), 'res binder', EMPTY, H.size)
      b = concat(b, vec8(await H.hmac(bkey, await H.digest(b))))
    } else {
      b = concat(b, [0])
    }
    hs.hello = b
    hs.state = 'wait-server-hello'
    return hs
  }

  #fail (code, op) { this.state = 'failed'; this.privs = null; fail(code, op) }

  // handleServerHello verifies the ServerHello and returns the client Finished to
  // send and the established Conn.
  async handleServerHello (msg) {
    const op = 'server hello'
    if (this.state !== 'wait-server-hello') this.#fail(Code.UnexpectedMessage, op)
    let sh
    try { sh = parseServerHello(msg) } catch (e) { this.state = 'failed'; throw e }
    const idx = this.suites.findIndex((s) => s.id === sh.suite)
    if (idx < 0) this.#fail(Code.SuiteNotOffered, op)
    const suite = this.suites[idx]
    const H = suite.hash
    let psk = null
    let serverKeyId = null
    if (sh.mode === MODE_RESUMED) {
      if (!this.session || this.session.suite !== suite.id) this.#fail(Code.UnexpectedMessage, op)
      psk = this.session.psk
      serverKeyId = this.session.serverKeyId
    }
    if (sh.share.length !== suite.kem.ciphertextSize) this.#fail(Code.BadKeyShare, op)
    let shared
    try { shared = await this.privs[idx].decapsulate(sh.share) } catch { this.#fail(Code.BadKeyShare, op) }

    if (sh.mode !== MODE_RESUMED) {
      let key = null
      if (sh.mode === MODE_FULL) {
        key = this.pinned.find((k) => k.alg === suite.sig && equalCT(k.id, sh.keyId))
      } else {
        // Certificate mode: this client does not validate X.509 chains; it accepts
        // a chain whose leaf carries a pinned key, and the signature is checked
        // with the pinned key itself.
        key = this.pinned.find((k) => k.alg === suite.sig && contains(sh.chain[0], k.publicKey))
      }
      if (!key) this.#fail(Code.UnknownServerKey, op)
      const th1 = await H.digest(concat(this.hello, msg.subarray(0, sh.coreEnd)))
      if (!(await verifySignature(key.alg, key.publicKey, concat(SIG_CONTEXT, th1), sh.sig))) this.#fail(Code.BadSignature, op)
      serverKeyId = key.id
    }
    const th2 = await H.digest(concat(this.hello, msg.subarray(0, sh.sigEnd)))
    const hsSecret = await extract(H, await derived(H, await earlySecret(H, psk)), shared)
    wipe(shared)
    const sFin = await H.hmac(await expandLabel(H, hsSecret, 's finished', EMPTY, H.size), th2)
    if (!equalCT(sFin, sh.finished)) this.#fail(Code.BadFinished, op)
    const th3 = await H.digest(concat(this.hello, msg))
    const fin = concat([MSG_FINISHED], vec8(await H.hmac(await expandLabel(H, hsSecret, 'c finished', EMPTY, H.size), th3)))
    const th4 = await H.digest(concat(this.hello, msg, fin))
    const master = await extract(H, await derived(H, hsSecret), new Uint8Array(H.size))
    const conn = new Conn(suite, sh.rekeyAfter, sh.mode === MODE_RESUMED, serverKeyId)
    await conn.out.setSecret(await expandLabel(H, master, 'c ap traffic', th3, H.size))
    await conn.in.setSecret(await expandLabel(H, master, 's ap traffic', th3, H.size))
    this.nstSecret = await expandLabel(H, master, 's nst', th4, H.size)
    this.resMaster = await expandLabel(H, master, 'res master', th4, H.size)
    wipe(hsSecret)
    wipe(master)
    this.suite = suite
    this.serverKeyId = serverKeyId
    this.state = 'done'
    this.privs = null
    return { finished: fin, conn }
  }

  // handleNewSessionTicket opens the server's ticket message and returns the
  // session to offer next time: { suite, psk, ticket, expiry (ms), serverKeyId }.
  async handleNewSessionTicket (msg) {
    const op = 'new session ticket'
    if (this.state !== 'done' || !this.nstSecret || msg.length < 1 || msg[0] !== MSG_NEW_SESSION_TICKET) fail(Code.UnexpectedMessage, op)
    const s = this.suite
    const key = await expandLabel(s.hash, this.nstSecret, 'key', EMPTY, s.aead.keySize)
    const iv = await expandLabel(s.hash, this.nstSecret, 'iv', EMPTY, 12)
    const pt = await (await s.aead.create(key)).open(iv, msg.subarray(1), msg.subarray(0, 1))
    if (pt === null) fail(Code.BadTicketMessage, op)
    const r = new Reader(pt)
    const life = r.u32()
    const ticket = r.vec16()
    if (life === null || !ticket || ticket.length === 0 || !r.empty()) fail(Code.BadTicketMessage, op)
    const session = {
      suite: s.id,
      psk: await expandLabel(s.hash, this.resMaster, 'resumption', EMPTY, s.hash.size),
      ticket: ticket.slice(),
      expiry: this.now() + life * 1000,
      serverKeyId: this.serverKeyId,
    }
    wipe(this.resMaster)
    this.resMaster = this.nstSecret = null
    return session
  }
}

export const isNewSessionTicket = (msg) => msg.length > 0 && msg[0] === MSG_NEW_SESSION_TICKET
