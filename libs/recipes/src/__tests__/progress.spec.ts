/**
 * Progress parsers against real engine log lines (reference
 * trainer-engines.md sections 2.7, 3.8, 8 and 11) and against the logs of
 * real smoke-trainer runs captured in __fixtures__/logs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getRecipe, KohyaProgressParser, PROGRESS_PARSER, type ProgressEvent } from '../index';

const LOGS = path.join(__dirname, '..', '__fixtures__', 'logs');
const log = (name: string) => fs.readFileSync(path.join(LOGS, name), 'utf8');

function feedAll(lines: string[]): ProgressEvent[] {
  const p = new KohyaProgressParser();
  return lines.flatMap((l) => p.feed(l));
}

const steps = (events: ProgressEvent[]) => events.filter((e): e is Extract<ProgressEvent, { kind: 'step' }> => e.kind === 'step');
const errors = (events: ProgressEvent[]) => events.filter((e): e is Extract<ProgressEvent, { kind: 'error' }> => e.kind === 'error');

describe('PROGRESS_PARSER.parseTqdm', () => {
  it('parses the sd-scripts training meter (tqdm format_meter, 3 significant digits)', () => {
    expect(PROGRESS_PARSER.parseTqdm('steps:  12%|█▏        | 120/1000 [01:23<10:10,  1.44it/s, avr_loss=0.123]')).toEqual({
      desc: 'steps',
      percent: 12,
      n: 120,
      total: 1000,
      elapsedSeconds: 83,
      etaSeconds: 610,
      itPerSec: 1.44,
      postfix: 'avr_loss=0.123',
    });
  });
  it('parses the first redraw with unknown ETA and rate (sd-scripts#1464)', () => {
    const t = PROGRESS_PARSER.parseTqdm('steps:   0%|          | 0/1600 [00:00<?, ?it/s]');
    expect(t).toMatchObject({ desc: 'steps', n: 0, total: 1600, elapsedSeconds: 0, postfix: '' });
    expect(t!.etaSeconds).toBeUndefined();
    expect(t!.itPerSec).toBeUndefined();
  });
  it('parses s/it and hour-long ETAs (musubi-tuner PR #700)', () => {
    const t = PROGRESS_PARSER.parseTqdm('steps:   2%|▏         | 10/600 [02:39<2:36:27, 15.91s/it, avr_loss=0.0978]');
    expect(t).toMatchObject({ n: 10, total: 600, elapsedSeconds: 159, etaSeconds: 2 * 3600 + 36 * 60 + 27 });
    expect(t!.itPerSec).toBeCloseTo(1 / 15.91, 6);
    expect(PROGRESS_PARSER.postfixNumber(t!.postfix, 'avr_loss')).toBe(0.0978);
  });
  it('parses ai-toolkit meters (job name as desc, lr/loss postfix) and ASCII bars', () => {
    const t = PROGRESS_PARSER.parseTqdm('my_first_flux_lora_v1:  12%|█▏        | 240/2000 [05:10<37:53,  1.29s/it, lr: 1.0e-04 loss: 4.123e-01]');
    expect(t).toMatchObject({ desc: 'my_first_flux_lora_v1', n: 240, total: 2000 });
    expect(PROGRESS_PARSER.postfixNumber(t!.postfix, 'loss')).toBeCloseTo(0.4123);
    expect(PROGRESS_PARSER.parseTqdm('100%|##########| 40/40 [00:10<00:00,  3.90it/s]')).toMatchObject({ desc: '', n: 40, total: 40 });
  });
  it('rejects lines that are not meters', () => {
    expect(PROGRESS_PARSER.parseTqdm('2024-08-16 10:58:26 INFO     unet dtype: torch.float8_e4m3fn, device: cuda:0      train_network.py:1004')).toBeNull();
    expect(PROGRESS_PARSER.parseTqdm('epoch 3/10')).toBeNull();
  });
  it('splits carriage-return redraws and strips ANSI escapes', () => {
    expect(PROGRESS_PARSER.splitSegments('a\rb\r\nc\n\n')).toEqual(['a', 'b', 'c']);
    expect(PROGRESS_PARSER.stripAnsi('\u001b[32mINFO\u001b[0m ok')).toBe('INFO ok');
    expect(PROGRESS_PARSER.parseDuration('1d, 02:03:04')).toBe(86400 + 7384);
  });
});

describe('KohyaProgressParser on sd-scripts / musubi-tuner lines', () => {
  it('reports steps with loss, speed, ETA and epoch from a \\r-joined chunk', () => {
    const events = feedAll([
      'running training / 学習開始',
      'total optimization steps / 学習ステップ数: 1000',
      '',
      'epoch 1/10',
      'steps:   0%|          | 0/1000 [00:00<?, ?it/s]\rsteps:  12%|█▏        | 120/1000 [01:23<10:10,  1.44it/s, avr_loss=0.123]',
    ]);
    expect(events[0]).toEqual({ kind: 'phase', name: 'training' });
    expect(events).toContainEqual({ kind: 'epoch', epoch: 1, totalEpochs: 10 });
    expect(steps(events).pop()).toEqual({ kind: 'step', step: 120, totalSteps: 1000, loss: 0.123, itPerSec: 1.44, etaSeconds: 610, epoch: 1 });
  });
  it('maps a resumed kohya bar (total = max_train_steps - initial_step) onto the announced total', () => {
    const events = feedAll([
      'total optimization steps / 学習ステップ数: 1000',
      'steps:   2%|▏         | 10/600 [00:12<11:48,  0.83it/s, avr_loss=0.0871]',
    ]);
    expect(steps(events)[0]).toMatchObject({ step: 410, totalSteps: 1000, loss: 0.0871 });
  });
  it('keeps the bar total when no total was announced (musubi restarts counters on resume, #461)', () => {
    expect(steps(feedAll(['steps:   2%|▏         | 10/600 [02:39<2:36:27, 15.91s/it, avr_loss=0.0978]']))[0]).toMatchObject({ step: 10, totalSteps: 600 });
  });
  it('ignores caching and loading bars that are not the training meter', () => {
    expect(steps(feedAll(['100%|██████████| 20/20 [00:05<00:00,  3.90it/s]', '100%|##########| 40/40 [00:10<00:00,  3.90it/s]']))).toHaveLength(0);
  });
  it('reports checkpoints, samples and the end of training', () => {
    const events = feedAll([
      'saving checkpoint: /job/out/my_lora-000003.safetensors',
      'generating sample images at step / サンプル画像生成 ステップ: 1500',
      'model saved.',
      'INFO:musubi_tuner.training.trainer_base:model saved.',
    ]);
    expect(events).toEqual([
      { kind: 'checkpoint', path: '/job/out/my_lora-000003.safetensors' },
      { kind: 'sample' },
      { kind: 'phase', name: 'saved' },
      { kind: 'phase', name: 'saved' },
    ]);
  });
  it('flags avr_loss=nan once (sd-scripts#1571), without a NaN loss value', () => {
    const events = feedAll([
      'steps:  10%|█         | 160/1600 [02:01<18:10,  1.32it/s, avr_loss=nan]',
      'steps:  10%|█         | 161/1600 [02:02<18:09,  1.32it/s, avr_loss=nan]',
    ]);
    expect(errors(events)).toHaveLength(1);
    expect(errors(events)[0]!.signature).toBe('nan-loss');
    expect(steps(events).every((s) => s.loss === undefined)).toBe(true);
  });
  it.each([
    ['torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 MiB. GPU 0 has a total capacity of 23.64 GiB of which 1.12 MiB is free.', 'cuda-oom'],
    ['RuntimeError: CUDA error: out of memory', 'cuda-oom'],
    ['Killed', 'host-oom'],
    ["subprocess.CalledProcessError: Command '['/opt/venv/bin/python', 'flux_train_network.py']' died with <Signals.SIGKILL: 9>.", 'host-oom'],
    ['RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed. ', 'host-oom'],
    ["FileNotFoundError: [Errno 2] No such file or directory: '/data/models/flux1-dev.safetensors'", 'missing-file'],
  ] as const)('classifies %s as %s', (line, signature) => {
    expect(errors(feedAll([line]))).toEqual([{ kind: 'error', signature, line: line.trim() }]);
  });
  it('reports the exception that ends a Python traceback', () => {
    const events = feedAll([
      'Traceback (most recent call last):',
      '  File "/opt/sd-scripts/library/config_util.py", line 420, in sanitize_user_config',
      '    return self.user_config_validator(user_config)',
      'voluptuous.error.MultipleInvalid: extra keys not allowed @ data[\'datasets\'][0][\'subsets\'][0][\'foo\']',
    ]);
    expect(errors(events)).toEqual([
      { kind: 'error', signature: 'engine-exception', line: "voluptuous.error.MultipleInvalid: extra keys not allowed @ data['datasets'][0]['subsets'][0]['foo']" },
    ]);
  });
  it('splits a traceback glued to the last tqdm redraw', () => {
    const events = feedAll(['steps:  50%|█████     | 50/100 [00:07<00:07,  6.58it/s, avr_loss=0.886]Traceback (most recent call last):', 'ValueError: boom']);
    expect(steps(events)[0]).toMatchObject({ step: 50, loss: 0.886 });
    expect(errors(events)).toEqual([{ kind: 'error', signature: 'engine-exception', line: 'ValueError: boom' }]);
  });
  it('does not treat ordinary Rich INFO lines as errors', () => {
    expect(feedAll(['2024-08-16 10:58:26 INFO     unet dtype: torch.float8_e4m3fn, device: cuda:0      train_network.py:1004'])).toEqual([]);
  });
});

describe('KohyaProgressParser on real smoke-trainer runs (captured in the scratch image)', () => {
  const parse = (name: string) => {
    const parser = getRecipe('smoke-cpu').createProgressParser();
    // The worker feeds stdout and stderr lines as they arrive; order within each stream is what matters here.
    return [...parser.feed(log(`smoke-${name}.stdout.txt`)), ...parser.feed(log(`smoke-${name}.stderr.txt`))];
  };
  it('successful run: 100/100 steps with loss, 50 epochs, samples, saved', () => {
    const events = parse('smoke');
    const last = steps(events).pop()!;
    expect(last).toMatchObject({ step: 100, totalSteps: 100 });
    expect(last.loss).toBeGreaterThan(0);
    expect(events.filter((e) => e.kind === 'epoch')).toHaveLength(50);
    expect(events).toContainEqual({ kind: 'checkpoint', path: '/data/output/my_lora_v1.safetensors' });
    expect(events.filter((e) => e.kind === 'sample' && e.path)).toHaveLength(2);
    expect(events).toContainEqual({ kind: 'phase', name: 'saved' });
    expect(errors(events)).toEqual([]);
  });
  it('NaN run: one nan-loss error', () => {
    const errs = errors(parse('nan'));
    expect(errs.map((e) => e.signature)).toEqual(['nan-loss']);
  });
  it('crash run: engine-exception with the RuntimeError line', () => {
    const errs = errors(parse('crash'));
    expect(errs).toHaveLength(1);
    expect(errs[0]).toMatchObject({ signature: 'engine-exception' });
    expect(errs[0]!.line).toMatch(/^RuntimeError: simulated engine crash/);
  });
  it('bad config: the trainer exits with a clear message the parser reports', () => {
    expect(errors(parse('bad'))).toEqual([
      { kind: 'error', signature: 'engine-exception', line: "ERROR: train.steps must be an integer in 1..100000, got 'many'" },
    ]);
  });
});
