/**
 * Structured JSON logs (pino). Secrets are redacted by key name wherever they
 * appear, and job/attempt ids ride along via child loggers.
 */
import pino, { Logger } from 'pino';

export const REDACT_PATHS = [
  '*.password', '*.secret', '*.secretAccessKey', '*.accessKeyId', '*.token', '*.authorization',
  '*.mongoUrl', '*.MONGO_URL', '*.R2_SECRET_ACCESS_KEY', '*.S3_SECRET_ACCESS_KEY', '*.credentials',
  'config.mongoUrl', 'env',
];

/** One redaction rule for every library and the worker (libs/common). */
export { redactUrl } from '@stationthis/common';

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'training-worker' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

export type { Logger };
