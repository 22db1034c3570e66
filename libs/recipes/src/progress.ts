/**
 * Progress parsing for the engines' real console output (see the reference
 * trainer-engines.md sections 2.7, 3.8 and 8). Parsers are pure and stateful:
 * one instance per container run, fed one line at a time.
 */
import type { ErrorSignature, ProgressEvent, ProgressParser } from './contract';

/** A parsed tqdm meter line. */
export interface TqdmLine {
  /** The bar's description (`steps` for kohya/musubi, the job name for ai-toolkit); '' when none. */
  desc: string;
  percent: number;
  n: number;
  total: number;
  elapsedSeconds?: number;
  etaSeconds?: number;
  itPerSec?: number;
  /** Raw postfix after the rate, e.g. `avr_loss=0.123` or `lr: 1.0e-04 loss: 4.123e-01`. */
  postfix: string;
}

// `desc: 12%|█▏        | 120/1000 [01:23<10:10,  1.44it/s, avr_loss=0.123]`
// The bar itself may be unicode blocks, '#' (non-UTF-8 output) or spaces.
const TQDM_RE = /^(?:(.*?):\s*)?(\d{1,3})%\|[^|]*\|\s*(\d+)\/(\d+)\s*\[([^\]<]*)<([^\],]*),\s*([^\],]*?)(?:,\s*([^\]]*))?\]\s*$/;

// ANSI escapes start with ESC (0x1b): matching the control character is the point.
// eslint-disable-next-line no-control-regex
const ANSI_RE = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;

/** Shared tqdm helpers, used by every engine parser. */
export const PROGRESS_PARSER = {
  /** Remove ANSI colour/cursor escapes (Rich, tqdm on a TTY). */
  stripAnsi(line: string): string {
    return line.replace(ANSI_RE, '');
  },
  /** tqdm redraws with '\r': split a captured chunk into the segments a parser should see. */
  splitSegments(chunk: string): string[] {
    return chunk
      .split(/\r\n|\r|\n/)
      .map((s) => s.trimEnd())
      .filter((s) => s.trim().length > 0);
  },
  /** `01:23`, `1:02:03`, `1d, 2:03:04` → seconds; `?` → undefined. */
  parseDuration(s: string): number | undefined {
    const t = s.trim();
    if (!t || t.includes('?')) return undefined;
    let days = 0;
    let rest = t;
    const dm = /^(\d+)d,?\s*(.*)$/.exec(t);
    if (dm) {
      days = Number(dm[1]);
      rest = dm[2]!;
    }
    const parts = rest.split(':').map(Number);
    if (parts.length < 2 || parts.length > 3 || parts.some((p) => !Number.isFinite(p))) return undefined;
    const [h, m, sec] = parts.length === 3 ? parts : [0, parts[0]!, parts[1]!];
    return days * 86400 + h! * 3600 + m! * 60 + sec!;
  },
  /** `1.44it/s` → 1.44; `15.91s/it` → 1/15.91; `?it/s` → undefined. */
  parseRate(s: string): number | undefined {
    const m = /^\s*([\d.]+)\s*(it\/s|s\/it)\s*$/.exec(s);
    if (!m) return undefined;
    const v = Number(m[1]);
    if (!Number.isFinite(v) || v <= 0) return undefined;
    return m[2] === 'it/s' ? v : 1 / v;
  },
  /** Parse one tqdm meter segment, or null when the line is not a meter. */
  parseTqdm(line: string): TqdmLine | null {
    const m = TQDM_RE.exec(PROGRESS_PARSER.stripAnsi(line).trim());
    if (!m) return null;
    const elapsed = PROGRESS_PARSER.parseDuration(m[5]!);
    const eta = PROGRESS_PARSER.parseDuration(m[6]!);
    const rate = PROGRESS_PARSER.parseRate(m[7]!);
    return {
      desc: (m[1] ?? '').trim(),
      percent: Number(m[2]),
      n: Number(m[3]),
      total: Number(m[4]),
      ...(elapsed !== undefined ? { elapsedSeconds: elapsed } : {}),
      ...(eta !== undefined ? { etaSeconds: eta } : {}),
      ...(rate !== undefined ? { itPerSec: rate } : {}),
      postfix: (m[8] ?? '').trim(),
    };
  },
  /** Read a numeric postfix value such as `avr_loss=0.123` or `loss: 4.1e-01`; NaN for `nan`. */
  postfixNumber(postfix: string, key: string): number | undefined {
    const m = new RegExp(`(?:^|[\\s,])${key}\\s*[=:]\\s*([-+]?(?:nan|inf|[\\d.]+(?:e[-+]?\\d+)?))`, 'i').exec(postfix);
    if (!m) return undefined;
    const raw = m[1]!.toLowerCase();
    if (raw.endsWith('nan')) return Number.NaN;
    if (raw.endsWith('inf')) return raw.startsWith('-') ? -Infinity : Infinity;
    return Number(raw);
  },
};

/** Error signatures common to every PyTorch engine. Order matters: first match wins. */
export const ERROR_SIGNATURES: ReadonlyArray<{ signature: ErrorSignature; pattern: RegExp }> = [
  { signature: 'cuda-oom', pattern: /CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|OOM during training step \d+ times in a row/i },
  {
    signature: 'host-oom',
    pattern:
      /^Killed\s*$|died with <Signals\.SIGKILL: 9>|is killed by signal: Killed|Out of memory: Killed process|^MemoryError\b|exited unexpectedly with exit code 137|returned non-zero exit status -9|signal 9 \(SIGKILL\)/i,
  },
  { signature: 'nan-loss', pattern: /\bloss is NaN\b|avr_loss=nan\b|\bloss: nan\b|NaN detected in loss/i },
  { signature: 'missing-file', pattern: /FileNotFoundError|No such file or directory/i },
];

/** A tqdm meter followed by unrelated text on the same line. */
const METER_THEN_TEXT = /^(.*?\|\s*\d+\/\d+\s*\[[^\]]*\])(.*\S.*)$/;

/** `SomeError: message` at the end of a Python traceback. */
const EXCEPTION_LINE = /^([A-Za-z_][\w.]*(?:Error|Exception|Invalid|Interrupt|Exit))(?::\s|$)/;

export function classifyErrorLine(line: string): ErrorSignature | undefined {
  for (const { signature, pattern } of ERROR_SIGNATURES) if (pattern.test(line)) return signature;
  return undefined;
}

export interface KohyaParserOptions {
  /** tqdm description of the training bar; kohya and musubi both use 'steps'. @default 'steps' */
  stepsDesc?: string;
}

/**
 * Parser for kohya sd-scripts, musubi-tuner and the smoke trainer (which
 * prints the same shapes):
 * - stdout `total optimization steps / 学習ステップ数: N` gives the run's total;
 * - stderr tqdm `steps:  12%|█▏ | 120/1000 [01:23<10:10,  1.44it/s, avr_loss=0.123]`;
 *   after `--resume --skip_until_initial_step` kohya's bar total is
 *   `max_train_steps - initial_step`, so the bar is shifted onto the announced
 *   total. The recipes resume with `--initial_step 0` instead (engine-saves.ts):
 *   bar and announced total agree and count from 0 (SavePlan `restarts`; the
 *   worker adds ResumeFrom.step). The smoke trainer's bar starts at the saved
 *   step of the job's total (`continues`);
 * - `epoch 3/10`, `saving checkpoint: <path>`, `generating sample images at step`, `model saved.`;
 * - error lines: NaN loss, CUDA OOM, host OOM kill, missing files, Python exceptions.
 */
export class KohyaProgressParser implements ProgressParser {
  private announcedTotal: number | undefined;
  private epoch: number | undefined;
  private inTraceback = false;
  private readonly reported = new Set<ErrorSignature>();
  private readonly stepsDesc: string;
  private lastStep = -1;

  constructor(options: KohyaParserOptions = {}) {
    this.stepsDesc = options.stepsDesc ?? 'steps';
  }

  feed(raw: string): ProgressEvent[] {
    const events: ProgressEvent[] = [];
    for (const segment of PROGRESS_PARSER.splitSegments(PROGRESS_PARSER.stripAnsi(raw))) {
      // tqdm leaves the cursor after the meter, so the next write (often a
      // crash's "Traceback ...") lands on the same line: split it off.
      const glued = METER_THEN_TEXT.exec(segment);
      if (glued && PROGRESS_PARSER.parseTqdm(glued[1]!)) {
        this.feedSegment(glued[1]!, events);
        this.feedSegment(glued[2]!, events);
      } else {
        this.feedSegment(segment, events);
      }
    }
    return events;
  }

  private error(signature: ErrorSignature, line: string, events: ProgressEvent[]): void {
    // One event per signature and run: a NaN shows on every following tqdm redraw.
    if (this.reported.has(signature)) return;
    this.reported.add(signature);
    events.push({ kind: 'error', signature, line: line.trim().slice(0, 500) });
  }

  private feedSegment(line: string, events: ProgressEvent[]): void {
    const trimmed = line.trim();
    const tqdm = PROGRESS_PARSER.parseTqdm(trimmed);
    if (tqdm) {
      if (tqdm.desc !== this.stepsDesc) return; // caching/loading bars are not training progress
      let step = tqdm.n;
      let total = tqdm.total;
      if (this.announcedTotal !== undefined && total < this.announcedTotal) {
        // Resumed kohya run: the bar counts only the remaining steps.
        step += this.announcedTotal - total;
        total = this.announcedTotal;
      }
      const loss = PROGRESS_PARSER.postfixNumber(tqdm.postfix, 'avr_loss');
      if (step !== this.lastStep || loss !== undefined) {
        this.lastStep = step;
        events.push({
          kind: 'step',
          step,
          totalSteps: total,
          ...(loss !== undefined && Number.isFinite(loss) ? { loss } : {}),
          ...(tqdm.itPerSec !== undefined ? { itPerSec: tqdm.itPerSec } : {}),
          ...(tqdm.etaSeconds !== undefined ? { etaSeconds: tqdm.etaSeconds } : {}),
          ...(this.epoch !== undefined ? { epoch: this.epoch } : {}),
        });
      }
      if (loss !== undefined && !Number.isFinite(loss)) this.error('nan-loss', trimmed, events);
      return;
    }

    let m: RegExpExecArray | null;
    if ((m = /total optimization steps\s*(?:\/[^:]*)?:\s*(\d+)/i.exec(trimmed))) {
      this.announcedTotal = Number(m[1]);
      return;
    }
    if (/^running training\b/i.test(trimmed)) {
      events.push({ kind: 'phase', name: 'training' });
      return;
    }
    if ((m = /^epoch (\d+)\/(\d+)\s*$/.exec(trimmed))) {
      this.epoch = Number(m[1]);
      events.push({ kind: 'epoch', epoch: this.epoch, totalEpochs: Number(m[2]) });
      return;
    }
    if ((m = /saving checkpoint:\s*(\S.*)$/.exec(trimmed))) {
      events.push({ kind: 'checkpoint', path: m[1]!.trim() });
      return;
    }
    if ((m = /^sample saved:\s*(\S.*)$/.exec(trimmed))) {
      events.push({ kind: 'sample', path: m[1]!.trim() });
      return;
    }
    if (/generating sample images at step/i.test(trimmed)) {
      events.push({ kind: 'sample' });
      return;
    }
    if (/(?:^|:)model saved\.\s*$/.test(trimmed)) {
      events.push({ kind: 'phase', name: 'saved' });
      return;
    }
    if (/\bcaching latents\b/i.test(trimmed)) {
      events.push({ kind: 'phase', name: 'cache-latents' });
      return;
    }

    if (/^Traceback \(most recent call last\):/.test(trimmed)) {
      this.inTraceback = true;
      return;
    }
    const signature = classifyErrorLine(trimmed);
    if (signature) {
      this.error(signature, trimmed, events);
      this.inTraceback = false;
      return;
    }
    if (/^ERROR: /.test(trimmed) || (this.inTraceback && EXCEPTION_LINE.test(trimmed))) {
      this.error('engine-exception', trimmed, events);
      this.inTraceback = false;
    }
  }
}
