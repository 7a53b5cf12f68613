// MQTT.js in headless Chromium over WSS. Serves a page on 127.0.0.1 that connects to coremq,
// subscribes to browser/#, publishes browser/from-page, prints READY, and waits for a message
// on browser/from-paho (sent by the Python test). Prints one JSON line with what the page saw.
// Usage: node wss.mjs <wss-port> <protocol-version 4|5>
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [port, version] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const mqttJs = fs.readFileSync(path.join(here, 'node_modules/mqtt/dist/mqtt.min.js'));
const page = `<!doctype html><meta charset="utf-8"><title>coremq wss</title>
<script src="/mqtt.min.js"></script>
<script>
  window.log = [];
  const c = mqtt.connect('wss://localhost:${port}/mqtt', { protocolVersion: ${version}, clientId: 'browser-${version}', reconnectPeriod: 0 });
  c.on('error', e => window.log.push('error ' + e.message));
  c.on('connect', () => {
    c.subscribe('browser/#', { qos: 1 }, (err) => {
      if (err) { window.log.push('suberr ' + err.message); return; }
      window.subscribed = true;
      c.publish('browser/from-page', 'hello from chromium', { qos: 1 });
    });
  });
  c.on('message', (t, m) => window.log.push(t + ' ' + m.toString()));
</script>`;

const server = http.createServer((req, res) => {
  if (req.url === '/mqtt.min.js') { res.writeHead(200, { 'content-type': 'text/javascript' }); res.end(mqttJs); }
  else { res.writeHead(200, { 'content-type': 'text/html' }); res.end(page); }
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const pagePort = server.address().port;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'coremq-chromium-'));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true, // the broker uses the `coremq certs dev` CA
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors'],
});
let result = { ok: false };
try {
  const p = browser.pages()[0] || await browser.newPage();
  await p.goto(`http://127.0.0.1:${pagePort}/`);
  await p.waitForFunction(() => window.subscribed === true, null, { timeout: 15000 });
  console.log('READY');
  await p.waitForFunction(() => window.log.some(l => l.startsWith('browser/from-paho')), null, { timeout: 15000 });
  result = { ok: true, log: await p.evaluate(() => window.log) };
} catch (e) {
  const log = await browser.pages()[0]?.evaluate(() => window.log).catch(() => null);
  result = { ok: false, error: String(e), log };
} finally {
  await browser.close();
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
