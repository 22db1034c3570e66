/**
 * Worker configuration from the environment. Every value has a default that
 * points at the local services (tools/services), so `nx serve training-worker`
 * works with no environment set; every override is validated up front so a
 * typo fails at start-up with a message naming the variable.
 */
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { getRecipe } from '@stationthis/recipes';

const bool = z
  .enum(['1', '0', 'true', 'false', 'yes', 'no'])
  .transform((v) => v === '1' || v === 'true' || v === 'yes');

const schema = z.object({
  MONGO_URL: z.string().regex(/^mongodb(\+srv)?:\/\//, 'must start with mongodb:// or mongodb+srv://').default('mongodb://127.0.0.1:27017'),
  MONGO_DB_NAME: z.string().regex(/^[A-Za-z0-9_-]+$/).default('noema'),
  TRAINING_ENVIRONMENT: z.enum(['production', 'development']).default('development'),
  WORKER_ID: z.string().min(1).optional(),
  WORKER_STATE_DIR: z.string().optional(),
  WORKER_HTTP_PORT: z.coerce.number().int().min(0).max(65535).default(9464),
  WORKER_HTTP_HOST: z.string().default('127.0.0.1'),
  WORKER_POLL_MS: z.coerce.number().int().min(50).max(60_000).default(2000),
  WORKER_LEASE_MS: z.coerce.number().int().min(2000).max(3_600_000).default(60_000),
  WORKER_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(10).default(3),
  WORKER_SHUTDOWN_GRACE_MS: z.coerce.number().int().min(0).max(3_600_000).default(30_000),
  WORKER_CANCEL_POLL_MS: z.coerce.number().int().min(100).max(60_000).default(2000),
  WORKER_PROGRESS_THROTTLE_MS: z.coerce.number().int().min(100).max(600_000).default(5000),
  WORKER_EXIT_WHEN_IDLE: bool.default(false),
  WORKER_MAINTENANCE_MS: z.coerce.number().int().min(200).max(3_600_000).default(30_000),
  WORKER_STALL_TIMEOUT_MS: z.coerce.number().int().min(1000).default(15 * 60_000),
  WORKER_MAX_JOB_MS: z.coerce.number().int().min(1000).default(24 * 3_600_000),
  CONTAINER_MEMORY_BYTES: z.coerce.number().int().min(16 * 1024 * 1024).default(8 * 1024 ** 3),
  CONTAINER_PIDS_LIMIT: z.coerce.number().int().min(16).default(4096),
  IMAGE_MANIFEST_PATH: z.string().optional(),
  IMAGE_REGISTRY: z.string().default('127.0.0.1:5000'),
  IMAGE_NAMESPACE: z.string().default('stationthis'),
  DATASET_CREATOR_SHARE: z.coerce.number().min(0).max(1).default(0.05),
  TRAINER_SHARE: z.coerce.number().min(0).max(1).default(0.02),
  // Test hosts only: run GPU recipes on a CPU slot with each recipe's testRun profile (two steps, CPU dtypes).
  WORKER_CPU_TEST_RUNS: bool.default(false),
  // Operator-only recipes this worker offers (comma-separated recipe ids, e.g. flux2-klein-lora): off the menu until named here.
  RECIPES_ENABLED: z
    .string()
    .transform((v) => v.split(',').map((s) => s.trim()).filter((s) => s.length > 0))
    .superRefine((ids, ctx) => {
      for (const id of ids) {
        try {
          getRecipe(id);
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message });
        }
      }
    })
    .optional(),
  // Operator-provisioned base models (air-gapped hosts, the engine demo): files here are used instead of R2.
  WEIGHTS_LOCAL_DIR: z.string().refine((v) => v.startsWith('/'), 'must be an absolute path').optional(),
  // Removed: the fee lives in libs/recipes pricing and is recorded in each quote, so quote and settlement agree.
  PLATFORM_FEE_MULTIPLIER: z.undefined({ error: 'was removed: the platform fee is PLATFORM_FEE in @stationthis/recipes, recorded in each quote; unset it' }).optional(),
  // Checkpoint retention (ADR 0008): checkpoints are kept this long after the attempt ends, or this long after a promotion.
  CHECKPOINT_RETENTION_DAYS: z.coerce.number().min(0).max(3650).default(14),
  CHECKPOINT_RETENTION_AFTER_PROMOTION_HOURS: z.coerce.number().min(0).max(24 * 3650).default(24),
  // Attempt records looked at per maintenance pass (bounds one pass's storage calls).
  CHECKPOINT_RETENTION_BATCH: z.coerce.number().int().min(1).max(1000).default(10),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // The operator's dashboard on the HTTP port (src/dashboard): `auto` serves it on a loopback host, and on any host once
  // DASHBOARD_TOKEN is set; `on` refuses to start without a token on a non-loopback host; `off` never serves it.
  WORKER_DASHBOARD: z.enum(['auto', 'on', 'off']).default('auto'),
  DASHBOARD_TOKEN: z.string().min(16, 'must be at least 16 characters (e.g. `openssl rand -hex 24`)').regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces').optional(),
});

export type WorkerConfig = ReturnType<typeof loadWorkerConfig>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function loadWorkerConfig(env: NodeJS.ProcessEnv = process.env) {
  const parsed = schema.safeParse(Object.fromEntries(Object.entries(env).filter(([, v]) => v !== '')));
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  - ${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`Invalid worker configuration:\n${lines.join('\n')}\nFix the variables above (see README "Environment").`);
  }
  const c = parsed.data;
  const dashboard = dashboardAccess(c.WORKER_DASHBOARD, c.WORKER_HTTP_HOST, c.DASHBOARD_TOKEN);
  const repoRoot = resolve(__dirname, '../../../..');
  const stateDir = resolve(c.WORKER_STATE_DIR ?? env.STATIONTHIS_STATE_DIR ?? join(repoRoot, '.state'));
  return {
    mongoUrl: c.MONGO_URL,
    mongoDbName: c.MONGO_DB_NAME,
    environment: c.TRAINING_ENVIRONMENT,
    workerId: c.WORKER_ID ?? `${hostname()}:${process.pid}`,
    stateDir,
    jobsDir: join(stateDir, 'jobs'),
    http: { host: c.WORKER_HTTP_HOST, port: c.WORKER_HTTP_PORT },
    pollMs: c.WORKER_POLL_MS,
    leaseMs: c.WORKER_LEASE_MS,
    maxAttempts: c.WORKER_MAX_ATTEMPTS,
    shutdownGraceMs: c.WORKER_SHUTDOWN_GRACE_MS,
    cancelPollMs: c.WORKER_CANCEL_POLL_MS,
    progressThrottleMs: c.WORKER_PROGRESS_THROTTLE_MS,
    exitWhenIdle: c.WORKER_EXIT_WHEN_IDLE,
    maintenanceMs: c.WORKER_MAINTENANCE_MS,
    stallTimeoutMs: c.WORKER_STALL_TIMEOUT_MS,
    maxJobMs: c.WORKER_MAX_JOB_MS,
    containerMemoryBytes: c.CONTAINER_MEMORY_BYTES,
    containerPidsLimit: c.CONTAINER_PIDS_LIMIT,
    imageManifestPath: c.IMAGE_MANIFEST_PATH ?? join(repoRoot, 'apps/recipe-builder/build/image-manifest.json'),
    imageRegistry: c.IMAGE_REGISTRY,
    imageNamespace: c.IMAGE_NAMESPACE,
    shares: { datasetCreator: c.DATASET_CREATOR_SHARE, trainer: c.TRAINER_SHARE },
    cpuTestRuns: c.WORKER_CPU_TEST_RUNS,
    /** Operator-only recipe ids enabled on this worker (libs/recipes RegistryOptions.enabled). */
    recipesEnabled: c.RECIPES_ENABLED ?? [],
    weightsLocalDir: c.WEIGHTS_LOCAL_DIR,
    checkpointRetention: {
      afterCompletionMs: c.CHECKPOINT_RETENTION_DAYS * 24 * 3_600_000,
      afterPromotionMs: c.CHECKPOINT_RETENTION_AFTER_PROMOTION_HOURS * 3_600_000,
      batch: c.CHECKPOINT_RETENTION_BATCH,
    },
    logLevel: c.LOG_LEVEL,
    dashboard,
  };
}

/** Whether the dashboard is served, and behind which token (null: none, only ever on a loopback host). */
export interface DashboardAccess {
  enabled: boolean;
  token: string | null;
  /** Why an `auto` dashboard is not served (logged at start-up), else null. */
  disabledBecause: string | null;
}

/** True for addresses only this host can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h) || /^::ffff:127(\.\d{1,3}){3}$/.test(h);
}

/**
 * The dashboard shows every job's owner, reasons and logs: on an address others
 * can reach it is served only behind DASHBOARD_TOKEN. `on` without one there is
 * a configuration error; `auto` without one leaves it off and says why.
 */
export function dashboardAccess(mode: 'auto' | 'on' | 'off', host: string, token: string | undefined): DashboardAccess {
  if (mode === 'off') return { enabled: false, token: null, disabledBecause: 'WORKER_DASHBOARD=off' };
  if (token) return { enabled: true, token, disabledBecause: null };
  if (isLoopbackHost(host)) return { enabled: true, token: null, disabledBecause: null };
  const why = `WORKER_HTTP_HOST=${host} is not a loopback address and DASHBOARD_TOKEN is unset`;
  if (mode === 'on') {
    throw new ConfigError(`Invalid worker configuration:\n  - WORKER_DASHBOARD: on, but ${why}: anyone who reaches the port would see every job.\nSet DASHBOARD_TOKEN (\`openssl rand -hex 24\`), bind WORKER_HTTP_HOST=127.0.0.1, or set WORKER_DASHBOARD=off.`);
  }
  return { enabled: false, token: null, disabledBecause: `${why} (set DASHBOARD_TOKEN to serve it)` };
}
