// Jest global setup: every project declares the real services its tests need
// (jest.config.js `globals.requiredServices`). Each is probed with a short
// timeout; a missing one fails the run at once, naming the service and the
// command that starts it, instead of letting tests hang.
const net = require('node:net');
const http = require('node:http');
const { execFile } = require('node:child_process');

const START = 'tools/services/services.sh up';

function tcpProbe(url, timeoutMs) {
  const u = new URL(url.replace(/^mongodb(\+srv)?:/, 'http:'));
  const host = u.hostname;
  const port = Number(u.port || 27017);
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok, why) => { s.destroy(); resolve(ok ? null : why); };
    s.setTimeout(timeoutMs, () => done(false, `no answer from ${host}:${port} within ${timeoutMs} ms`));
    s.on('connect', () => done(true));
    s.on('error', (e) => done(false, `${host}:${port}: ${e.code || e.message}`));
  });
}

function httpProbe(url, timeoutMs) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => { res.resume(); resolve(res.statusCode < 500 ? null : `HTTP ${res.statusCode}`); });
    req.on('timeout', () => { req.destroy(); resolve(`no answer within ${timeoutMs} ms`); });
    req.on('error', (e) => resolve(e.code || e.message));
  });
}

function dockerProbe(timeoutMs) {
  return new Promise((resolve) => {
    const sock = (process.env.DOCKER_HOST || 'unix:///var/run/docker.sock').replace(/^unix:\/\//, '');
    const req = http.get({ socketPath: sock, path: '/_ping', timeout: timeoutMs }, (res) => { res.resume(); resolve(res.statusCode === 200 ? null : `HTTP ${res.statusCode}`); });
    req.on('timeout', () => { req.destroy(); resolve(`no answer within ${timeoutMs} ms`); });
    req.on('error', (e) => resolve(`${sock}: ${e.code || e.message}`));
  });
}

const probes = {
  mongo: () => tcpProbe(process.env.MONGO_URL || 'mongodb://127.0.0.1:27017', 2000),
  s3: () => httpProbe(`${process.env.S3_ENDPOINT || 'http://127.0.0.1:9000'}/minio/health/live`, 2000),
  docker: () => dockerProbe(3000),
  registry: () => httpProbe(`http://${process.env.REGISTRY_URL || '127.0.0.1:5000'}/v2/`, 2000),
};

module.exports = async function globalSetup(_globalConfig, projectConfig) {
  const needed = (projectConfig && projectConfig.globals && projectConfig.globals.requiredServices) || [];
  const failures = [];
  await Promise.all(needed.map(async (name) => {
    const why = await probes[name]();
    if (why) failures.push(`  - ${name}: ${why}`);
  }));
  if (failures.length) {
    throw new Error(
      `Required services are not reachable for ${projectConfig.displayName?.name || projectConfig.displayName || 'this project'}:\n` +
      `${failures.join('\n')}\nStart them with: ${START}   (check with: tools/services/services.sh status)`,
    );
  }
};
