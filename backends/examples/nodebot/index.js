// An example Unigate bot plugin in Node.js: any language with gRPC can
// serve a backend. It performs go-plugin's handshake by hand (see
// docs/backends.md, "Writing a plugin in another language"):
//
//  1. refuse to run unless the gateway's magic cookie is in the environment;
//  2. serve unigate.backends.v1.Bot (from backends/proto/backends.proto), the
//     standard health service and go-plugin's GRPCController on a Unix socket;
//  3. print exactly one line on stdout, "1|1|unix|/path/to.sock|grpc", and
//     nothing else there afterwards (logs go to stderr).
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');

const COOKIE_KEY = 'UNIGATE_BACKEND_PLUGIN';
const COOKIE_VALUE = '5f1b8f0e2c7a4d39b6e0a1c4d8f27e63'; // backends.Handshake
const CORE_PROTOCOL = 1; // go-plugin's
const APP_PROTOCOL = 1; // backends.Handshake.ProtocolVersion

const log = (msg, fields = {}) =>
  process.stderr.write(JSON.stringify({ '@level': 'info', '@message': msg, ...fields }) + '\n');

if (process.env[COOKIE_KEY] !== COOKIE_VALUE) {
  process.stderr.write('This binary is a Unigate plugin: the gateway starts it. See docs/backends.md.\n');
  process.exit(1);
}
const versions = (process.env.PLUGIN_PROTOCOL_VERSIONS || String(APP_PROTOCOL)).split(',');
if (!versions.includes(String(APP_PROTOCOL))) {
  process.stderr.write(`unsupported app protocol versions ${versions}; this plugin speaks ${APP_PROTOCOL}\n`);
  process.exit(1);
}

const loadOpts = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const protoDir = path.join(__dirname, '..', '..', 'proto');
const backends = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(protoDir, 'backends.proto'), loadOpts)).unigate.backends.v1;
const controller = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(__dirname, 'grpc_controller.proto'), loadOpts)).plugin;

// The bot: a keyword table in English and Chinese.
const table = [
  { keywords: ['human', 'agent', '人工'], intent: 'handoff', handoff: true },
  { keywords: ['hours', 'open', '营业', '几点'], intent: 'opening_hours', text: 'We are open 9:00-18:00, Monday to Friday.', textZh: '营业时间为周一至周五 9:00-18:00。' },
  { keywords: ['refund', '退款'], intent: 'billing/refund', skill: 'billing/refund', text: 'Refunds are processed within 5 working days.', textZh: '退款将在 5 个工作日内处理。' },
];

function answer(req) {
  const text = (req.text || '').toLowerCase();
  const zh = /[\u4e00-\u9fff]/.test(text) || (req.language || '').startsWith('zh');
  for (const e of table) {
    if (e.keywords.some((k) => text.includes(k))) {
      if (e.handoff) {
        return { text: zh ? '正在为您转接人工客服。' : 'Connecting you to an agent.', intent: e.intent, confidence: 1, handoff: true, summary: req.text, skill: '' };
      }
      return { text: zh ? e.textZh : e.text, intent: e.intent, confidence: 0.9, handoff: false, summary: req.text, skill: e.skill || '' };
    }
  }
  return { text: 'node echo: ' + req.text, intent: 'unknown', confidence: 0.1, handoff: false, summary: req.text, skill: '' };
}

const server = new grpc.Server();
server.addService(backends.Bot.service, {
  Answer: (call, callback) => {
    try {
      callback(null, answer(call.request));
    } catch (err) {
      callback({ code: grpc.status.INTERNAL, details: String(err) });
    }
  },
});
new HealthImplementation({ '': 'SERVING', plugin: 'SERVING' }).addToServer(server);

const sockDir = fs.mkdtempSync(path.join(process.env.PLUGIN_UNIX_SOCKET_DIR || os.tmpdir(), 'unigate-nodebot-'));
const sockPath = path.join(sockDir, 'plugin.sock');
const cleanup = () => fs.rmSync(sockDir, { recursive: true, force: true });

function shutdown(reason) {
  log('shutting down', { reason });
  server.tryShutdown(() => {
    cleanup();
    process.exit(0);
  });
  setTimeout(() => { cleanup(); process.exit(0); }, 2000).unref();
}

server.addService(controller.GRPCController.service, {
  Shutdown: (call, callback) => {
    callback(null, {});
    setImmediate(() => shutdown('GRPCController.Shutdown'));
  },
});
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => {}); // the gateway handles Ctrl-C and stops plugins itself

server.bindAsync('unix:' + sockPath, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    process.stderr.write(`cannot listen on ${sockPath}: ${err}\n`);
    cleanup();
    process.exit(1);
  }
  // The handshake line: the only thing this process ever writes to stdout.
  process.stdout.write(`${CORE_PROTOCOL}|${APP_PROTOCOL}|unix|${sockPath}|grpc\n`);
  log('nodebot serving', { socket: sockPath, node: process.version });
});
