#!/usr/bin/env node
// Peer gateway: Node 20 + socket.io 4.8 (websocket transport only), printd's protocol as Socket.IO events.
//
//   client -> server  42["printer.status",{printer_id,status,ts,...}]   (agents)
//                     42["ping",{"id":N}]                                -> 42["ack",{"id":N}]
//   server -> client  42["hello",{...}] after connect; dashboards then 42["printer.status.snapshot",{printers}]
//                     42["printer.status.batch",{printers:[item,...]}]  per company, to that company's dashboards
//
// The JWT (HS256, jsonwebtoken) comes from handshake.query.token or handshake.auth.token and is
// checked in an io.use() middleware: a bad token fails the connect (Socket.IO CONNECT_ERROR "44").
// Same batching as the Python peers: per (company, printer_id) the latest state wins; every
// --batch-ms each company's changed printers go as one event to room "dash:<company>";
// --batch-ms 0 forwards each update at once. Heartbeat far beyond any run (the Python peers
// have keepalive off too). --compression deflate enables ws permessage-deflate (threshold 1 KiB)
// for clients that offer it. --gc-signal (run node with --expose-gc): SIGUSR2 forces a full GC.
//
// Cluster mode (--redis URL): N of these processes on one Redis with @socket.io/redis-adapter,
// the way the system printd replaces was scaled out. Each instance batches the updates of the
// agents connected to it and emits each company's batch to room "dash:<company>" through the
// adapter, which publishes it on Redis for the dashboards on every other instance. Snapshots
// stay per instance (the latest states are not kept in Redis). --instance ID names the instance
// in `hello`. --batch-stamp adds `sent_at` (epoch seconds at the batch tick) to each batch, so
// a client can tell the server-added latency (tick -> receipt) from the wait for the tick.
//
//   JWT_SECRET=... node socketio_peer.js --port 9003 [--batch-ms 100] [--compression deflate|none]
//   JWT_SECRET=... node socketio_peer.js --port 9004 --redis redis://127.0.0.1:6390 --instance sio-1 --batch-stamp
'use strict';
const crypto = require('crypto');
const http = require('http');
const jwt = require('jsonwebtoken');
const { Server } = require('socket.io');

const ROLES = new Set(['agent', 'dashboard', 'service', 'admin']);

function parseArgs(argv) {
  const a = {
    port: 0, batchMs: 100, compression: 'none', gcSignal: false, redis: '', instance: '', batchStamp: false,
  };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--port') a.port = parseInt(argv[++i], 10);
    else if (k === '--batch-ms') a.batchMs = parseFloat(argv[++i]);
    else if (k === '--compression') a.compression = argv[++i];
    else if (k === '--gc-signal') a.gcSignal = true;
    else if (k === '--redis') a.redis = argv[++i];
    else if (k === '--instance') a.instance = argv[++i];
    else if (k === '--batch-stamp') a.batchStamp = true;
    else { process.stderr.write(`unknown argument ${k}\n`); process.exit(2); }
  }
  if (!a.port) { process.stderr.write('--port is required\n'); process.exit(2); }
  return a;
}

const args = parseArgs(process.argv);
if (!process.env.JWT_SECRET) { process.stderr.write('JWT_SECRET is not set\n'); process.exit(2); }
// A KeyObject made once: given the secret as a string, jsonwebtoken 9 first tries (and fails) to
// parse it as a public key on every verify, ~0.75 ms instead of ~30 us per token.
const secret = crypto.createSecretKey(Buffer.from(process.env.JWT_SECRET));

function verify(token) {
  if (typeof token !== 'string' || !token) return null;
  let claims;
  try {
    claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
  } catch (e) {
    return null;
  }
  if (!claims.sub || !claims.exp || !ROLES.has(claims.role)) return null;
  if ((claims.role === 'agent' || claims.role === 'dashboard') && !claims.company) return null;
  if (claims.role === 'agent' && !claims.branch) return null;
  return claims;
}

// Clustered, a company's dashboards may be on any instance: every batch goes through the adapter
// (which publishes it on Redis whether or not a dashboard of that company is connected anywhere).
const clustered = Boolean(args.redis);
const state = new Map();      // company -> Map(printer_id -> item): latest states
let pending = new Map();      // company -> Map(printer_id -> item): changed since the last batch
const watchers = new Map();   // company -> number of connected dashboards

function companyMap(m, company) {
  let c = m.get(company);
  if (!c) { c = new Map(); m.set(company, c); }
  return c;
}

const httpServer = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: args.compression === 'deflate' ? { threshold: 1024 } : false,
  httpCompression: false,
  pingInterval: 3600 * 1000,
  pingTimeout: 60 * 1000,
  maxHttpBufferSize: 1e6,
  serveClient: false,
});

io.use((socket, next) => {
  const hs = socket.handshake;
  const claims = verify(hs.query.token || (hs.auth && hs.auth.token));
  if (!claims) { next(new Error('unauthorized')); return; }
  socket.data.claims = claims;
  next();
});

io.on('connection', (socket) => {
  const claims = socket.data.claims;
  const company = claims.company;
  const isDashboard = claims.role === 'dashboard';
  socket.emit('hello', {
    sub: claims.sub, role: claims.role, company, server_time: Date.now() / 1000, instance: args.instance,
  });
  if (isDashboard) {
    socket.join('dash:' + company);
    watchers.set(company, (watchers.get(company) || 0) + 1);
    socket.emit('printer.status.snapshot', { printers: [...companyMap(state, company).values()] });
  }
  socket.on('printer.status', (data) => {
    if (claims.role !== 'agent' || !data || typeof data.printer_id !== 'string') return;
    data.branch = claims.branch;
    data.agent_id = claims.sub;
    data.at = Date.now() / 1000;
    companyMap(state, company).set(data.printer_id, data);
    if (args.batchMs > 0) companyMap(pending, company).set(data.printer_id, data);
    else if (clustered || watchers.get(company)) emitBatch(company, [data]);
  });
  socket.on('ping', (data) => { socket.emit('ack', { id: data && data.id }); });
  socket.on('disconnect', () => {
    if (isDashboard) watchers.set(company, watchers.get(company) - 1);
  });
});

function emitBatch(company, printers) {
  const batch = args.batchStamp ? { printers, sent_at: Date.now() / 1000 } : { printers };
  io.to('dash:' + company).emit('printer.status.batch', batch);
}

function flush() {
  const batch = pending;
  pending = new Map();
  for (const [company, items] of batch) {
    if (clustered || watchers.get(company)) emitBatch(company, [...items.values()]);
  }
}

if (args.batchMs > 0) {
  let nextT = performance.now();
  const tick = () => {
    nextT += args.batchMs;
    flush();
    setTimeout(tick, Math.max(0, nextT - performance.now()));
  };
  setTimeout(tick, args.batchMs);
}

function version(name) {
  try { return require(`${name}/package.json`).version; } catch (e) { return null; }
}

async function attachRedis() {
  if (!clustered) return;
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url: args.redis });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on('error', (e) => process.stderr.write(`redis: ${e.message}\n`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

attachRedis().then(() => {
  httpServer.listen({ port: args.port, host: '127.0.0.1', backlog: 4096 }, () => {
    process.stdout.write(JSON.stringify({
      ready: true, impl: 'sio', port: args.port, batch_ms: args.batchMs, compression: args.compression,
      node: process.version, socketio: version('socket.io'), ws: version('ws'), instance: args.instance,
      redis_adapter: clustered ? version('@socket.io/redis-adapter') : null,
      redis_client: clustered ? version('redis') : null,
    }) + '\n');
  });
}, (e) => { process.stderr.write(`cannot reach Redis at ${args.redis}: ${e.message}\n`); process.exit(1); });

if (args.gcSignal && typeof global.gc === 'function') {
  process.on('SIGUSR2', () => { global.gc(); });
}

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
