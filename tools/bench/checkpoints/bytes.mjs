#!/usr/bin/env node
/**
 * Bytes per intermediate save, per recipe: the checkpoint LoRA and the engine
 * state folder the worker uploads at each save (issue 14).
 *   node tools/bench/checkpoints/bytes.mjs [report.json] [smoke-output-dir]
 * report.json: the conformance report (.state/conformance/report.json), whose
 * resume cases (`<recipe>:resume`) record the step-1 save of the CPU test run
 * (random weights, the cases' rank 8; production ranks scale the bytes).
 * smoke-output-dir: an output folder of a smoke run with saves (run.sh makes one).
 * Prints one JSON line per recipe.
 */
import { readFileSync, readdirSync, statSync, existsSync } from 'node:fs';
import * as path from 'node:path';

const reportPath = process.argv[2] ?? path.resolve('.state/conformance/report.json');
const smokeDir = process.argv[3];

function folderBytes(dir) {
  let bytes = 0;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) bytes += statSync(path.join(e.parentPath, e.name)).size;
  }
  return bytes;
}

const rows = [];
if (existsSync(reportPath)) {
  const report = JSON.parse(readFileSync(reportPath, 'utf8'));
  for (const c of report.cases ?? []) {
    if (!c.saves) continue;
    const seconds = (label) => c.steps.filter((s) => s.name.startsWith(`${label}:`)).reduce((t, s) => t + s.wallSeconds, 0);
    rows.push({
      recipe: c.recipe,
      checkpointBytes: c.saves.checkpoint.bytes,
      stateBytes: c.saves.state.bytes,
      stateFiles: c.saves.state.files,
      finalLoraBytes: c.saves.resumed?.loraBytes ?? null,
      firstRunSeconds: Math.round(seconds('first') * 10) / 10,
      resumedRunSeconds: Math.round(seconds('resumed') * 10) / 10,
      resumedAt: c.saves.resumed ? `engine ${c.saves.resumed.engineStep}/${c.saves.resumed.engineTotal} = job ${c.saves.resumed.jobStep}/${c.saves.resumed.jobTotal}` : null,
      measuredAt: report.at,
    });
  }
} else {
  console.error(`no conformance report at ${reportPath}: run tools/conformance/run.sh sdxl-lora:resume wan-lora:resume`);
}

if (smokeDir) {
  const names = readdirSync(smokeDir);
  const ckpt = names.find((n) => /-step\d{8}\.safetensors$/.test(n));
  const state = names.find((n) => /-step\d{8}-state$/.test(n));
  if (!ckpt || !state) throw new Error(`${smokeDir} holds no checkpoint and state: run the smoke trainer with save_every_n_steps and save_state`);
  const stateDir = path.join(smokeDir, state);
  rows.push({
    recipe: 'smoke-cpu',
    checkpointBytes: statSync(path.join(smokeDir, ckpt)).size,
    stateBytes: folderBytes(stateDir),
    stateFiles: Object.fromEntries(readdirSync(stateDir).map((f) => [f, statSync(path.join(stateDir, f)).size])),
  });
}

for (const r of rows) console.log(JSON.stringify(r));
